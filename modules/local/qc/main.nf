process TISSUEMAP_QC {
    tag "${meta.id}"
    label 'process_low'

    input:
    // meta: id (the sample's name) and bin_size (the samplesheet's, Visium HD only; tissuemap qc applies its default)
    tuple val(meta), path(sample_input)

    output:
    tuple val(meta), path("${meta.id}.qc.h5ad"), emit: h5ad
    tuple val(meta), path("${meta.id}.qc.json"), emit: json
    tuple val(meta), path("${meta.id}.qc_*.png"), emit: png
    tuple val("${task.process}"), val('tissuemap'), eval("tissuemap --version | sed 's/.* //'"), emit: versions

    script:
    def args = task.ext.args ?: ''
    def bin_size_option = meta.bin_size ? "--bin-size ${meta.bin_size}" : ''
    """
    tissuemap-qc \\
        --sample ${meta.id} \\
        --input ${sample_input} \\
        ${bin_size_option} \\
        ${args} \\
        --outdir .
    """

    stub:
    """
    touch ${meta.id}.qc.h5ad ${meta.id}.qc.json ${meta.id}.qc_histograms.png ${meta.id}.qc_spatial.png
    """
}
