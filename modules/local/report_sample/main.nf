process TISSUEMAP_REPORTSAMPLE {
    tag "${meta.id}"
    label 'process_low'

    input:
    // the sample's files from qc and map: NAME.qc.json, NAME.abundance.h5ad, NAME.mapping_history.json, plots
    tuple val(meta), path(sample_files, stageAs: 'input/*')

    output:
    tuple val(meta), path("${meta.id}.report.html"), emit: html
    tuple val("${task.process}"), val('tissuemap'), eval("tissuemap --version | sed 's/.* //'"), emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    tissuemap-report-sample \\
        --sample ${meta.id} \\
        --input-dir input \\
        ${args} \\
        --outdir .
    """

    stub:
    """
    touch ${meta.id}.report.html
    """
}
