process TISSUEMAP_FILTERGENES {
    tag "${meta.id}"
    label 'process_medium'

    input:
    // meta: id, labels_key (the obs column of cell types)
    tuple val(meta), path(reference, stageAs: 'input/*')

    output:
    tuple val(meta), path("reference.filtered.h5ad"), emit: h5ad
    tuple val(meta), path("reference.filter_genes.json"), emit: json
    tuple val(meta), path("reference.filter_genes.png"), emit: png
    tuple val("${task.process}"), val('tissuemap'), eval("tissuemap --version | sed 's/.* //'"), emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    tissuemap-filter-genes \\
        --reference ${reference} \\
        --labels-key '${meta.labels_key}' \\
        ${args} \\
        --outdir .
    """

    stub:
    """
    touch reference.filtered.h5ad reference.filter_genes.json reference.filter_genes.png
    """
}
