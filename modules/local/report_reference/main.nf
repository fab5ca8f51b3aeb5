process TISSUEMAP_REPORTREFERENCE {
    tag "${meta.id}"
    label 'process_low'

    input:
    // the files of filter-genes and signatures: reference.filter_genes.json, signatures.csv,
    // reference.signatures_history.json and the plots of both steps
    tuple val(meta), path(reference_files, stageAs: 'input/*')

    output:
    tuple val(meta), path("reference.report.html"), emit: html
    tuple val("${task.process}"), val('tissuemap'), eval("tissuemap --version | sed 's/.* //'"), emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    tissuemap-report-reference \\
        --input-dir input \\
        ${args} \\
        --outdir .
    """

    stub:
    """
    touch reference.report.html
    """
}
