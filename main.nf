#!/usr/bin/env nextflow
/*
    tissuemap: map cell types onto 10x Visium samples with the cell2location model, over many samples.

    nextflow run . -profile docker --input samplesheet.csv --reference reference.h5ad --labels_key cell_type \
        --n_cells_per_location 30 --outdir results

    Parameters: nextflow_schema.json (or `nextflow run . --help`); each step is a `tissuemap` command (bin/).
*/

include { TISSUEMAP               } from './workflows/tissuemap'
include { PIPELINE_INITIALISATION } from './subworkflows/local/utils_tissuemap_pipeline'
include { PIPELINE_COMPLETION     } from './subworkflows/local/utils_tissuemap_pipeline'

workflow {
    PIPELINE_INITIALISATION(
        params.validate_params,
        params.input,
        params.reference,
        params.labels_key,
        params.batch_key,
        params.covariate_keys,
        params.signatures,
        params.outdir,
        params.trace_report_suffix,
        params,
    )

    TISSUEMAP(
        PIPELINE_INITIALISATION.out.samplesheet,
        PIPELINE_INITIALISATION.out.samples,
        PIPELINE_INITIALISATION.out.reference,
        PIPELINE_INITIALISATION.out.signatures,
        !params.skip_multiqc,
    )

    PIPELINE_COMPLETION(
        params.outdir,
        TISSUEMAP.out.versions_yml,
    )
}
