process TISSUEMAP_QC {
    tag "${meta.id}"
    label 'process_low'

    input:
    // meta: id (the sample's name)
    tuple val(meta), path(sample_input)

    output:
    tuple val(meta), path("${meta.id}.qc.h5ad"), emit: h5ad
    tuple val(meta), path("${meta.id}.qc.json"), emit: json
    tuple val(meta), path("${meta.id}.qc_*.png"), emit: png
    tuple val("${task.process}"), val('tissuemap'), eval("tissuemap --version | sed 's/.* //'"), emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    tissuemap-qc \\
        --sample ${meta.id} \\
        --input ${sample_input} \\
        ${args} \\
        --outdir .
    """

    stub:
    """
    touch ${meta.id}.qc.h5ad ${meta.id}.qc.json ${meta.id}.qc_histograms.png ${meta.id}.qc_spatial.png
    """
}
