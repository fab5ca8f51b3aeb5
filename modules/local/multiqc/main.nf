process MULTIQC {
    tag "${[multiqc_files].flatten().size()} files"
    label 'process_single'

    // MultiQC runs in its own environment, not tissuemap's
    conda 'bioconda::multiqc=1.25.1'
    container "${workflow.containerEngine in ['singularity', 'apptainer'] && !task.ext.singularity_pull_docker_container
        ? 'https://depot.galaxyproject.org/singularity/multiqc:1.25.1--pyhdfd78af_0'
        : 'quay.io/biocontainers/multiqc:1.25.1--pyhdfd78af_0'}"

    input:
    // custom content (*_mqc.json) and the software versions (*_mqc_versions.yml); each file in its own folder
    // so that equal names cannot clash
    path multiqc_files, stageAs: '?/*'

    output:
    path "multiqc_report.html", emit: report
    path "multiqc_data", emit: data
    path "multiqc_plots", optional: true, emit: plots
    tuple val("${task.process}"), val('multiqc'), eval("multiqc --version | sed 's/.* //'"), emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    multiqc \\
        --force \\
        ${args} \\
        .
    """

    stub:
    """
    mkdir multiqc_data
    touch multiqc_report.html multiqc_data/multiqc.log
    """
}
