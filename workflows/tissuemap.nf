/*
    The tissuemap workflow: QC of every sample; gene filter and signatures of the reference, once; cell2location
    mapping of each sample, of each slide or of all samples together; a report per sample, a reference report, a
    summary and a MultiQC report. It reads no params: main.nf hands it everything.
*/

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
    ch_samples           // channel: [ val(meta), path(Space Ranger outs/ folder or .h5ad) ]; meta: id, slide, n_cells_per_location, detection_alpha
    ch_reference         // channel: [ val(meta), path(reference .h5ad) ]; meta: id, labels_key, batch_key, covariate_keys. Empty when signatures are given
    ch_signatures        // channel: path(signatures.csv) given by the user; empty when learnt from the reference
    mapping_mode         // string: 'per-sample', 'joint' or 'slide': which samples are fitted together
    n_cells_per_location // number: expected cells per spot of the samples without their own value
    run_multiqc          // boolean: make the MultiQC report

    main:
    ch_versions = channel.empty()

    //
    // Samples: spot QC
    //
    TISSUEMAP_QC(ch_samples)
    ch_versions = ch_versions.mix(TISSUEMAP_QC.out.versions.first())

    //
    // Reference: gene filter, signatures and report, once
    //
    TISSUEMAP_FILTERGENES(ch_reference)
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
    // Mapping: one task per group of samples fitted together. A group starts as soon as the QC of its samples is
    // done; its samples are in name order, so that a rerun fits them in the same order.
    //
    ch_group_sizes = ch_samples
        .map { meta, _input -> [mappingGroup(meta, mapping_mode), meta.id] }
        .groupTuple()
        .map { group, names -> [group, names.size()] }
    ch_map_input = TISSUEMAP_QC.out.h5ad
        .map { meta, h5ad -> [mappingGroup(meta, mapping_mode), meta.id, h5ad] }
        .combine(ch_group_sizes, by: 0)
        .map { group, name, h5ad, size -> [groupKey(group, size), name, h5ad] }
        .groupTuple()
        .map { group, names, files ->
            def pairs = [names, files].transpose().toSorted { pair -> pair[0] }
            [[id: group.toString(), samples: pairs.collect { pair -> pair[0] }], pairs.collect { pair -> pair[1] }]
        }
    TISSUEMAP_MAP(ch_map_input, ch_signatures_csv, n_cells_per_location)
    ch_versions = ch_versions.mix(TISSUEMAP_MAP.out.versions.first(), TISSUEMAP_MAP.out.versions_torch.first())

    // back to one item per sample: [ name, its NAME.* files from the mapping ]
    ch_mapped = TISSUEMAP_MAP.out.h5ad
        .join(TISSUEMAP_MAP.out.csv)
        .join(TISSUEMAP_MAP.out.history)
        .join(TISSUEMAP_MAP.out.png)
        .flatMap { group, h5ad, csv, history, png ->
            def files = [h5ad, csv, history, png].flatten()
            group.samples.collect { name -> [name, files.findAll { f -> sampleOwning(f.name, group.samples) == name }] }
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

// The samples fitted together with this one: itself alone, all samples, or those of its slide (a sample without a
// slide is a slide of its own, as in the QC step). The names are those of `tissuemap run`.
def mappingGroup(meta, mapping_mode) {
    if (mapping_mode == 'joint') {
        return 'joint'
    }
    if (mapping_mode == 'slide') {
        return "slide-${meta.slide ?: meta.id}".toString()
    }
    return meta.id
}

// The sample a file of the mapping step belongs to: the longest sample name that prefixes it ('a.b.abundance.h5ad'
// belongs to sample 'a.b', not to 'a'). conf/modules.config publishes the files by the same rule.
def sampleOwning(file_name, samples) {
    return samples.findAll { name -> file_name.startsWith("${name}.") }.max { name -> name.size() }
}

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
