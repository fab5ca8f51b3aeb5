process TISSUEMAP_QC {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(sample_input)

    output:
    tuple val(meta), path("${meta.id}.qc.h5ad"), emit: h5ad
    tuple val(meta), path("${meta.id}.qc.json"), emit: json
    tuple val(meta), path("${meta.id}.qc_*.png"), emit: png
    tuple val("${task.process}"), val('tissuemap'), eval("tissuemap --version | sed 's/.* //'"), emit: versions

    script:
    def args = task.ext.args ?: ''
    // The samplesheet's per-sample mapping hyper-parameters; the QC step stores them for the mapping step.
    def sample_options = [
        meta.n_cells_per_location ? "--n-cells-per-location ${meta.n_cells_per_location}" : '',
        meta.detection_alpha ? "--detection-alpha ${meta.detection_alpha}" : '',
        meta.slide ? "--slide ${meta.slide}" : '',
    ].join(' ').trim()
    """
    tissuemap-qc \\
        --sample ${meta.id} \\
        --input ${sample_input} \\
        ${sample_options} \\
        ${args} \\
        --outdir .
    """

    stub:
    """
    touch ${meta.id}.qc.h5ad ${meta.id}.qc.json ${meta.id}.qc_histograms.png ${meta.id}.qc_spatial.png
    """
}
