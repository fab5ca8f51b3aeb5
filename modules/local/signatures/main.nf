process TISSUEMAP_SIGNATURES {
    tag "${meta.id}"
    label 'process_high'
    label 'process_gpu'

    input:
    // meta: id, labels_key, batch_key and covariate_keys (obs columns of the reference; the last two optional)
    tuple val(meta), path(reference, stageAs: 'input/*')

    output:
    tuple val(meta), path("signatures.csv"), emit: signatures
    tuple val(meta), path("reference.signatures.h5ad"), emit: h5ad
    tuple val(meta), path("reference.signatures_history.json"), emit: history
    tuple val(meta), path("reference.signatures_*.png"), emit: png
    tuple val("${task.process}"), val('tissuemap'), eval("tissuemap --version | sed 's/.* //'"), emit: versions
    // torch's build tells whether the fit could use a GPU (e.g. 2.5.1+cu124)
    tuple val("${task.process}"), val('torch'), eval("python3 -c 'import torch; print(torch.__version__)'"), emit: versions_torch

    script:
    def args = task.ext.args ?: ''
    def key_options = [
        meta.batch_key ? "--batch-key '${meta.batch_key}'" : '',
        meta.covariate_keys ? "--covariate-keys '${meta.covariate_keys}'" : '',
    ].join(' ').trim()
    // Outside the task's work folder, which every retry gets anew: one folder per process, reference, options and
    // input (name and size), the same for every attempt and for -resume, so that a task stopped by SIGTERM (exit 75:
    // walltime, preemption) continues from its checkpoint; removed once the task succeeds.
    def checkpoint_root = task.ext.checkpoint_dir ?: "${workflow.workDir}/tissuemap-checkpoints"
    def checkpoint_key = "${meta.id}-" + "${meta.labels_key} ${key_options} ${args}".md5().take(12)
    """
    checkpoint_dir="${checkpoint_root}/${task.process.tokenize(':')[-1]}/${checkpoint_key}-\$(wc -c input/* | cksum | cut -d ' ' -f 1)"
    tissuemap-signatures \\
        --reference ${reference} \\
        --labels-key '${meta.labels_key}' \\
        ${key_options} \\
        --threads ${task.cpus} \\
        ${args} \\
        --checkpoint-dir "\$checkpoint_dir" \\
        --resume \\
        --outdir .
    rm -rf "\$checkpoint_dir"
    """

    stub:
    """
    touch signatures.csv reference.signatures.h5ad reference.signatures_history.json
    touch reference.signatures_elbo.png reference.signatures_obs_vs_expected.png reference.signatures_vs_average.png
    """
}
