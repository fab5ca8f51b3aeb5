process TISSUEMAP_MAP {
    tag "${meta.id}"
    label 'process_high'
    label 'process_gpu'

    input:
    // meta: id (the group of tissuemap plan: a sample, 'slide-SLIDE' or 'joint'), samples (its samples' names) and
    // cell_counts_samples (those with a samplesheet cell_counts file, in the order of cell_counts; each file in a
    // numbered folder, as two samples' files may share a name)
    tuple val(meta), path(spatial, stageAs: 'spatial/*'), path(cell_counts, stageAs: 'cell_counts/?/*')
    path signatures, stageAs: 'signatures/*'
    // mapping_plan.csv: each sample's cells per spot, detection alpha and slide
    path plan, stageAs: 'plan/*'

    output:
    // one file of each per sample, in the sample's folder: NAME/NAME.*
    tuple val(meta), path("*/*.abundance.h5ad"), emit: h5ad
    tuple val(meta), path("*/*.cell_abundance_*.csv"), emit: csv
    tuple val(meta), path("*/*.mapping_history.json"), emit: history
    tuple val(meta), path("*/*.png"), emit: png
    // with --spatialdata (params.spatialdata): each sample's SpatialData store
    tuple val(meta), path("*/*.zarr"), emit: zarr, optional: true
    tuple val("${task.process}"), val('tissuemap'), eval("tissuemap --version | sed 's/.* //'"), emit: versions
    // torch's build tells whether the fit could use a GPU (e.g. 2.5.1+cu124)
    tuple val("${task.process}"), val('torch'), eval("python3 -c 'import torch; print(torch.__version__)'"), emit: versions_torch

    script:
    def args = task.ext.args ?: ''
    // Outside the task's work folder, which every retry gets anew: one folder per process, group of samples,
    // options and inputs (names and sizes), the same for every attempt and for -resume, so that a task stopped by
    // SIGTERM (exit 75: walltime, preemption) continues from its checkpoint; removed once the task succeeds.
    def checkpoint_root = task.ext.checkpoint_dir ?: "${workflow.workDir}/tissuemap-checkpoints"
    // one staged file is a path, several a list of them (a path iterates over its name's parts: wrap it)
    def counts_files = cell_counts instanceof java.nio.file.Path ? [cell_counts] : cell_counts.collect { f -> f }
    def cell_counts_args = [meta.cell_counts_samples, counts_files].transpose()
        .collect { name, file -> "--cell-counts ${name}=${file}" }
        .join(' ')
    def checkpoint_key = "${meta.id}-" + "${args} ${cell_counts_args}".md5().take(12)
    """
    checkpoint_dir="${checkpoint_root}/${task.process.tokenize(':')[-1]}/${checkpoint_key}-\$(wc -c spatial/* signatures/* plan/* | cksum | cut -d ' ' -f 1)"
    tissuemap-map \\
        --spatial ${spatial} \\
        --signatures ${signatures} \\
        --plan ${plan} \\
        ${cell_counts_args} \\
        --threads ${task.cpus} \\
        ${args} \\
        --checkpoint-dir "\$checkpoint_dir" \\
        --resume \\
        --outdir .
    rm -rf "\$checkpoint_dir"
    """

    stub:
    """
    for name in ${meta.samples.join(' ')}; do
        mkdir -p \$name
        for suffix in abundance.h5ad cell_abundance_q05.csv cell_abundance_mean.csv mapping_history.json \\
            mapping_elbo.png mapping_observed_vs_expected.png mapping_cells_vs_counts.png cell_abundance_spatial.png; do
            touch \$name/\$name.\$suffix
        done
    done
    """
}
