process TISSUEMAP_REPORTSUMMARY {
    tag "${[qc_json].flatten().size()} samples"
    label 'process_low'

    input:
    // every sample's NAME.qc.json and NAME.abundance.h5ad
    path qc_json, stageAs: 'input/*'
    path abundance, stageAs: 'input/*'
    // the training histories (NAME.mapping_history.json, reference.signatures_history.json when learnt): the
    // summary says which fit had not levelled off
    path histories, stageAs: 'input/*'

    output:
    path "summary.html", emit: html
    tuple val("${task.process}"), val('tissuemap'), eval("tissuemap --version | sed 's/.* //'"), emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    tissuemap-report-summary \\
        --input-dir input \\
        ${args} \\
        --outdir .
    """

    stub:
    """
    touch summary.html
    """
}
