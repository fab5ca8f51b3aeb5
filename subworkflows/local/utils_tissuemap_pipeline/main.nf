/*
    Start and end of a tissuemap run: parameter checks, the samplesheet as a channel, the reference or the given
    signatures; at the end, the software versions into pipeline_info/ and a closing message.
*/

include { paramsSummaryLog; samplesheetToList; validateParameters } from 'plugin/nf-schema'

workflow PIPELINE_INITIALISATION {

    take:
    validate_params // boolean: check the parameters against nextflow_schema.json
    input           // string: samplesheet CSV
    reference       // string: annotated single-cell reference .h5ad, or null
    labels_key      // string: obs column of the reference holding the cell types
    batch_key       // string: obs column of the reference holding the batches, or null
    covariate_keys  // string: comma-separated obs columns with technical effects, or null
    signatures      // string: signatures.csv of an earlier run instead of the reference, or null
    outdir          // string: results folder
    run_suffix      // string: suffix of this run's files in pipeline_info/
    parameters      // map: every parameter of the run, written to pipeline_info/

    main:
    if (validate_params) {
        validateParameters()
    }
    log.info(paramsSummaryLog(workflow))
    writeParameters(parameters, outdir, run_suffix)

    def samplesheet = file(input, checkIfExists: true)
    ch_samples = channel
        .fromList(samplesheetRows(samplesheet, "${projectDir}/assets/schema_input.json"))
        // an empty cell_counts is [] (or null): no file
        .map { meta, spaceranger_dir, h5ad, cell_counts ->
            [meta, spaceranger_dir ?: h5ad, cell_counts instanceof java.nio.file.Path ? cell_counts : []]
        }

    // Both or neither are given: the first task, tissuemap plan, stops the run with the error of `tissuemap run`
    ch_reference = reference
        ? channel.of([
            [id: 'reference', labels_key: labels_key, batch_key: batch_key, covariate_keys: covariate_keys],
            file(reference, checkIfExists: true),
        ])
        : channel.empty()
    ch_signatures = signatures ? channel.of(file(signatures, checkIfExists: true)) : channel.empty()

    emit:
    samplesheet = channel.value(samplesheet) // channel: path(samplesheet.csv), the user's
    samples     = ch_samples                 // channel: [ val(meta), path(Space Ranger outs/ folder or .h5ad), path(cell counts CSV) or [] ]
    reference   = ch_reference               // channel: [ val(meta), path(reference .h5ad) ], or empty
    signatures  = ch_signatures              // channel: path(signatures.csv), or empty
}

workflow PIPELINE_COMPLETION {

    take:
    outdir       // string: results folder
    versions_yml // channel: path(tissuemap_software_mqc_versions.yml)

    main:
    versions_yml.collectFile(name: 'tissuemap_software_mqc_versions.yml', storeDir: "${outdir}/pipeline_info")

    // Inside this closure `workflow` is not the run's metadata: completionMessage, a function, reads it
    workflow.onComplete {
        completionMessage(outdir)
    }
}

/*
    FUNCTIONS
*/

// The run's last line: where the results are, or which task failed and where its log is
def completionMessage(outdir) {
    if (workflow.success) {
        log.info("tissuemap: done; results in ${outdir}")
        return
    }
    def report = workflow.errorReport ?: ''
    def failed_task = (report =~ /Error executing process > '([^']+)'/).findAll()
    def work_dir = (report =~ /(?m)^Work dir:\s*\n\s*(\S+)/).findAll()
    if (failed_task && work_dir) {
        log.error("tissuemap: failed in task ${failed_task[0][1]}; its log: ${work_dir[0][1]}/.command.log (the run's: .nextflow.log)")
    }
    else {
        log.error("tissuemap: failed: ${workflow.errorMessage ?: 'see the error above'} (the run's log: .nextflow.log)")
    }
}

// The run's parameters as JSON in pipeline_info/, beside Nextflow's trace, timeline and report.
def writeParameters(parameters, outdir, run_suffix) {
    def folder = file("${outdir}/pipeline_info")
    folder.mkdirs()
    def json = groovy.json.JsonOutput.toJson(parameters)
    folder.resolve("params_${run_suffix}.json").text = groovy.json.JsonOutput.prettyPrint(json)
}

// The samplesheet's rows as nf-schema reads them (meta map and paths). Paths in it are relative to its folder, as
// for `tissuemap run`: nf-schema, which reads them from where Nextflow was started, gets a copy with those paths
// made absolute, and its errors are told with the user's file in place of the copy.
def samplesheetRows(samplesheet, schema) {
    def copy = samplesheetWithAbsolutePaths(samplesheet, workflow.workDir.resolve("tissuemap-samplesheet/${workflow.sessionId}"))
    try {
        return samplesheetToList(copy, schema)
    }
    catch (Exception e) {
        error((e.message ?: e.toString()).replace(copy.toUriString(), samplesheet.toUriString()).replace(copy.toString(), samplesheet.toString()))
    }
}

// The samplesheet itself when its paths (columns spaceranger_dir, h5ad and cell_counts) are absolute, else a copy in `folder`
// whose relative paths are resolved from the samplesheet's own folder.
def samplesheetWithAbsolutePaths(samplesheet, folder) {
    def rows = samplesheet.splitCsv(quote: '"')
    if (rows.isEmpty()) {
        return samplesheet
    }
    def header = rows[0].collect { cell -> cell.replace('\uFEFF', '').trim() }
    def path_indices = (0..<header.size()).findAll { index -> header[index] in ['spaceranger_dir', 'h5ad', 'cell_counts'] }
    def changed = false
    rows.drop(1).each { cells ->
        path_indices.each { index ->
            def value = index < cells.size() ? cells[index].trim() : ''
            if (value && !value.startsWith('/') && !value.contains('://')) {
                cells[index] = samplesheet.parent.resolve(value).normalize().toUriString()
                changed = true
            }
        }
    }
    if (!changed) {
        return samplesheet
    }
    def copy = folder.resolve(samplesheet.name)
    folder.mkdirs()
    rows[0] = header
    copy.text = rows.collect { cells -> cells.collect { cell -> csvCell(cell) }.join(',') }.join('\n') + '\n'
    return copy
}

// A CSV cell, quoted when it holds a comma, a quote or a line break
def csvCell(value) {
    return value ==~ /(?s).*[",\r\n].*/ ? '"' + value.replace('"', '""') + '"' : value
}
