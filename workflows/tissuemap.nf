/*
    The tissuemap workflow: the mapping plan (which samples are fitted together, each one's settings); QC of every
    sample; gene filter and signatures of the reference, once; cell2location mapping of each group of the plan; a
    report per sample, a reference report, a summary and a MultiQC report. It reads no params: main.nf hands it
    everything, and conf/modules.config each step's options.
*/

include { TISSUEMAP_PLAN            } from '../modules/local/plan'
include { TISSUEMAP_QC              } from '../modules/local/qc'
include { TISSUEMAP_FILTERGENES     } from '../modules/local/filter_genes'
include { TISSUEMAP_SIGNATURES      } from '../modules/local/signatures'
include { TISSUEMAP_MAP             } from '../modules/local/map'
include { TISSUEMAP_REPORTSAMPLE    } from '../modules/local/report_sample'
include { TISSUEMAP_REPORTREFERENCE } from '../modules/local/report_reference'
include { TISSUEMAP_REPORTSUMMARY   } from '../modules/local/report_summary'
include { TISSUEMAP_MULTIQCCONTENT  } from '../modules/local/multiqc_content'
include { MULTIQC                   } from '../modules/local/multiqc'

workflow TISSUEMAP {

    take:
    ch_samplesheet // channel: path(samplesheet.csv), the user's: the mapping plan reads it
    ch_samples     // channel: [ val(meta), path(Space Ranger outs/ folder or .h5ad), path(cell counts CSV) or [] ]; meta: id (and the other columns)
    ch_reference   // channel: [ val(meta), path(reference .h5ad) ]; meta: id, labels_key, batch_key, covariate_keys. Empty when signatures are given
    ch_signatures  // channel: path(signatures.csv) given by the user; empty when learnt from the reference
    run_multiqc    // boolean: make the MultiQC report

    main:
    ch_versions = channel.empty()

    //
    // The mapping plan, before any other step (tissuemap plan, as in `tissuemap run`): each sample's group of
    // samples fitted together and its settings. A samplesheet it refuses stops the run before QC starts.
    //
    TISSUEMAP_PLAN(ch_samplesheet)
    ch_plan_rows = TISSUEMAP_PLAN.out.csv.splitCsv(header: true) // one row per sample: group, sample, ...
    ch_group_of = ch_plan_rows.map { row -> [row.sample, row.group] }
    ch_versions = ch_versions.mix(TISSUEMAP_PLAN.out.versions)

    //
    // Samples: spot QC. Its meta is the sample's name and the samplesheet's bin_size (which bins of a Visium HD
    // folder it reads) alone, so that a change in the mapping settings does not run it again.
    //
    TISSUEMAP_QC(
        ch_samples
            .map { meta, input, _cell_counts -> [meta.id, input, meta.bin_size] }
            .join(ch_group_of, failOnMismatch: true)
            .map { name, input, bin_size, _group -> [[id: name] + (bin_size ? [bin_size: bin_size] : [:]), input] }
    )
    ch_versions = ch_versions.mix(TISSUEMAP_QC.out.versions.first())

    //
    // Reference: gene filter, signatures and report, once (after the plan, too)
    //
    TISSUEMAP_FILTERGENES(ch_reference.combine(TISSUEMAP_PLAN.out.csv).map { meta, reference, _plan -> [meta, reference] })
    TISSUEMAP_SIGNATURES(TISSUEMAP_FILTERGENES.out.h5ad)
    TISSUEMAP_REPORTREFERENCE(
        TISSUEMAP_FILTERGENES.out.json
            .join(TISSUEMAP_FILTERGENES.out.png)
            .join(TISSUEMAP_SIGNATURES.out.signatures)
            .join(TISSUEMAP_SIGNATURES.out.history)
            .join(TISSUEMAP_SIGNATURES.out.png)
            .map { meta, json, png, csv, history, plots -> [meta, [json, png, csv, history, plots].flatten()] }
    )
    ch_versions = ch_versions.mix(
        TISSUEMAP_FILTERGENES.out.versions.first(),
        TISSUEMAP_SIGNATURES.out.versions.first(),
        TISSUEMAP_SIGNATURES.out.versions_torch.first(),
        TISSUEMAP_REPORTREFERENCE.out.versions.first(),
    )

    // the user's signatures or the learnt ones, as a value every mapping task reads
    ch_signatures_csv = ch_signatures
        .mix(TISSUEMAP_SIGNATURES.out.signatures.map { _meta, csv -> csv })
        .first()

    //
    // Mapping: one task per group of the plan, started as soon as the QC of its samples is done. The map step
    // fits them in the plan's order and reads their settings from the plan, and the cell counts files of the
    // samples that have one (--cell-counts NAME=FILE).
    //
    ch_group_samples = ch_plan_rows
        .map { row -> [row.group, row.sample] }
        .groupTuple()
    ch_cell_counts = ch_samples.map { meta, _input, cell_counts -> [meta.id, cell_counts] }
    ch_map_input = TISSUEMAP_QC.out.h5ad
        .map { meta, h5ad -> [meta.id, h5ad] }
        .join(ch_group_of)
        .join(ch_cell_counts)
        .map { name, h5ad, group, cell_counts -> [group, h5ad, cell_counts instanceof java.nio.file.Path ? [name, cell_counts] : []] }
        .combine(ch_group_samples, by: 0)
        .map { group, h5ad, counts, names -> [groupKey(group, names.size()), h5ad, counts, names] }
        .groupTuple()
        .map { group, files, counts, names ->
            def counted = counts.findAll { pair -> pair }.toSorted { pair -> pair[0] }
            [
                [id: group.toString(), samples: names[0], cell_counts_samples: counted.collect { pair -> pair[0] }],
                files.toSorted { f -> f.name },
                counted.collect { pair -> pair[1] },
            ]
        }
    TISSUEMAP_MAP(ch_map_input, ch_signatures_csv, TISSUEMAP_PLAN.out.csv)
    ch_versions = ch_versions.mix(TISSUEMAP_MAP.out.versions.first(), TISSUEMAP_MAP.out.versions_torch.first())

    // back to one item per sample: [ name, its files from the mapping ], each in the folder named after it
    ch_mapped = TISSUEMAP_MAP.out.h5ad
        .join(TISSUEMAP_MAP.out.csv)
        .join(TISSUEMAP_MAP.out.history)
        .join(TISSUEMAP_MAP.out.png)
        .flatMap { _group, h5ad, csv, history, png ->
            [h5ad, csv, history, png].flatten().groupBy { f -> f.parent.name }.collect { name, files -> [name, files] }
        }

    //
    // Reports: one per sample, then the summary of all
    //
    ch_report_input = TISSUEMAP_QC.out.json
        .join(TISSUEMAP_QC.out.png)
        .map { meta, json, png -> [meta.id, meta, [json, png].flatten()] }
        .join(ch_mapped)
        .map { _name, meta, qc_files, map_files -> [meta, qc_files + map_files] }
    TISSUEMAP_REPORTSAMPLE(ch_report_input)

    TISSUEMAP_REPORTSUMMARY(
        TISSUEMAP_QC.out.json.map { _meta, json -> json }.toSortedList { a, b -> a.name <=> b.name },
        TISSUEMAP_MAP.out.h5ad.flatMap { _meta, h5ad -> [h5ad].flatten() }.toSortedList { a, b -> a.name <=> b.name },
        TISSUEMAP_MAP.out.history.flatMap { _meta, json -> [json].flatten() }
            .mix(TISSUEMAP_SIGNATURES.out.history.map { _meta, json -> json })
            .toSortedList { a, b -> a.name <=> b.name },
    )
    ch_versions = ch_versions.mix(
        TISSUEMAP_REPORTSAMPLE.out.versions.first(),
        TISSUEMAP_REPORTSUMMARY.out.versions,
    )

    //
    // MultiQC: the samples' QC metrics and the software versions
    //
    ch_multiqc_report = channel.empty()
    if (run_multiqc) {
        TISSUEMAP_MULTIQCCONTENT(TISSUEMAP_QC.out.json.map { _meta, json -> json }.toSortedList { a, b -> a.name <=> b.name })
        ch_versions = ch_versions.mix(TISSUEMAP_MULTIQCCONTENT.out.versions)
    }
    ch_versions_yml = ch_versions
        .unique()
        .toList()
        .map { rows -> softwareVersionsYaml(rows) }
        .collectFile(name: 'tissuemap_software_mqc_versions.yml', newLine: true)
    if (run_multiqc) {
        MULTIQC(TISSUEMAP_MULTIQCCONTENT.out.mqc.mix(ch_versions_yml).collect())
        ch_multiqc_report = MULTIQC.out.report
    }

    emit:
    multiqc_report = ch_multiqc_report // channel: path(multiqc_report.html); empty without MultiQC
    versions_yml   = ch_versions_yml   // channel: path(tissuemap_software_mqc_versions.yml)
}

/*
    FUNCTIONS
*/

// The versions of every process's tools, and of the pipeline and Nextflow, as the YAML MultiQC reads from files
// named *_mqc_versions.yml: { process: { tool: version } }
def softwareVersionsYaml(rows) {
    def by_process = new TreeMap()
    rows.each { process_name, tool, version ->
        def process = process_name.tokenize(':').last()
        by_process[process] = (by_process[process] ?: new TreeMap()) + [(tool): version]
    }
    by_process['Workflow'] = [tissuemap: workflow.manifest.version, Nextflow: workflow.nextflow.version.toString()]
    return new org.yaml.snakeyaml.Yaml().dumpAsMap(by_process)
}
