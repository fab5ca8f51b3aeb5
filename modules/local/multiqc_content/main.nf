process TISSUEMAP_MULTIQCCONTENT {
    tag "${[qc_json].flatten().size()} samples"
    label 'process_single'

    input:
    // every sample's NAME.qc.json
    path qc_json, stageAs: 'input/*'

    output:
    path "*_mqc.json", emit: mqc
    tuple val("${task.process}"), val('tissuemap'), eval("tissuemap --version | sed 's/.* //'"), emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    tissuemap-multiqc-content \\
        --input-dir input \\
        ${args} \\
        --outdir .
    """

    stub:
    """
    touch tissuemap_qc_mqc.json tissuemap_spots_mqc.json
    """
}
