process TISSUEMAP_PLAN {
    tag "${samplesheet.name}"
    label 'process_single'

    input:
    // the user's samplesheet: the plan reads names, slides and per-sample settings, not the sample files
    path samplesheet, stageAs: 'input/*'

    output:
    path "mapping_plan.csv", emit: csv
    tuple val("${task.process}"), val('tissuemap'), eval("tissuemap --version | sed 's/.* //'"), emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    tissuemap-plan \\
        --input ${samplesheet} \\
        ${args} \\
        --outdir .
    """

    stub:
    // the real plan: it takes a moment, and a stub run's mapping tasks are formed from it
    def args = task.ext.args ?: ''
    """
    tissuemap-plan --input ${samplesheet} ${args} --outdir .
    """
}
