process TISSUEMAP_MAP {
    tag "${meta.id}"
    label 'process_high'
    label 'process_gpu'

    input:
    // meta: id (a sample, a slide or 'joint') and samples (the names of the samples fitted together)
    tuple val(meta), path(spatial, stageAs: 'spatial/*')
    path signatures, stageAs: 'signatures/*'
    // expected cells per spot for samples without their own value in the samplesheet
    val n_cells_per_location

    output:
    // one file of each per sample, named NAME.*
    tuple val(meta), path("*.abundance.h5ad"), emit: h5ad
    tuple val(meta), path("*.cell_abundance_*.csv"), emit: csv
    tuple val(meta), path("*.mapping_history.json"), emit: history
    tuple val(meta), path("*.png"), emit: png
    tuple val("${task.process}"), val('tissuemap'), eval("tissuemap --version | sed 's/.* //'"), emit: versions
    // torch's build tells whether the fit could use a GPU (e.g. 2.5.1+cu124)
    tuple val("${task.process}"), val('torch'), eval("python3 -c 'import torch; print(torch.__version__)'"), emit: versions_torch

    script:
    def args = task.ext.args ?: ''
    // Outside the task's work folder, which every retry gets anew: one folder per process, group of samples,
    // options and inputs (names and sizes), the same for every attempt and for -resume, so that a task stopped by
    // SIGTERM (exit 75: walltime, preemption) continues from its checkpoint; removed once the task succeeds.
    def checkpoint_root = task.ext.checkpoint_dir ?: "${workflow.workDir}/tissuemap-checkpoints"
    def checkpoint_key = "${meta.id}-" + "${args} ${n_cells_per_location}".md5().take(12)
    """
    # torch would otherwise start a thread per core of the node and contend with the other tasks packed on it
    export OMP_NUM_THREADS=${task.cpus}
    checkpoint_dir="${checkpoint_root}/${task.process.tokenize(':')[-1]}/${checkpoint_key}-\$(wc -c spatial/* signatures/* | cksum | cut -d ' ' -f 1)"
    tissuemap-map \\
        --spatial ${spatial} \\
        --signatures ${signatures} \\
        --n-cells-per-location ${n_cells_per_location} \\
        ${args} \\
        --checkpoint-dir "\$checkpoint_dir" \\
        --resume \\
        --outdir .
    rm -rf "\$checkpoint_dir"
    """

    stub:
    def touches = meta.samples.collect { name ->
        ['abundance.h5ad', 'cell_abundance_q05.csv', 'cell_abundance_mean.csv', 'mapping_history.json',
         'mapping_elbo.png', 'mapping_observed_vs_expected.png', 'mapping_cells_vs_counts.png',
         'cell_abundance_spatial.png'].collect { suffix -> "${name}.${suffix}" }.join(' ')
    }.join(' ')
    """
    touch ${touches}
    """
}
