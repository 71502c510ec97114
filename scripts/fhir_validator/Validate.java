/*
 * An independent FHIR R4 validator for otrules' tests: HAPI FHIR's instance
 * validator (the HL7 validator core behind it), fully offline.
 *
 *   java -cp '<cache>/lib/*:<cache>/classes' Validate [--warnings|--all] FILE.ndjson...
 *
 * Each non-blank line of each FILE is one FHIR R4 resource in JSON (a Bundle
 * is validated with its entries). For each such line one JSON object is
 * printed on stdout:
 *
 *   {"file": F, "line": N, "resourceType": T, "id": I,
 *    "issues": [{"severity": "error", "location": "Observation.status", "message": "..."}]}
 *
 * issues holds error and fatal issues only; --warnings adds warnings,
 * --all adds information too. Exit status: 0 no error or fatal issue in any
 * line, 1 some, 2 usage or I/O error (nothing more is validated then).
 *
 * Offline by construction: the validation support chain knows only the R4
 * core definitions shipped in hapi-fhir-validation-resources-r4 and the
 * code systems HAPI can check in memory; no package server, no terminology
 * server is ever asked. Codes of code systems it does not hold (LOINC, CPT,
 * SNOMED CT, local urn: systems) are therefore not checked: they give at
 * most a warning or information, never an error. Structure, cardinality,
 * data type formats, unknown elements, invariants and codes in value sets
 * the core defines (required bindings such as Observation.status) are.
 *
 * Built by scripts/fhir_validator/validator.py (javac against the jars that
 * pom.xml lists); see that file.
 */

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonNull;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;
import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;

public final class Validate {

    private static final String USAGE =
            "usage: Validate [--warnings|--all] FILE.ndjson...\n"
            + "  one FHIR R4 JSON resource per non-blank line; one JSON result per line on stdout\n"
            + "  --warnings  also report warnings; --all  also report information\n"
            + "  exit 0: no error, 1: some error or fatal issue, 2: usage or I/O error\n";

    private static final Pattern COLUMN = Pattern.compile("line \\d+ column (\\d+)");

    private Validate() {}

    public static void main(String[] args) {
        // Before any logger exists: SLF4J simple reads these once.
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
        // Parsing HAPI's own bundled definitions warns of elements R4 lacks.
        System.setProperty("org.slf4j.simpleLogger.log.ca.uhn.fhir.parser.LenientErrorHandler", "error");
        // stdout carries the results only: anything a library prints goes to stderr.
        PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), false, StandardCharsets.UTF_8);
        System.setOut(System.err);
        System.exit(run(args, out));
    }

    static int run(String[] args, PrintStream out) {
        ResultSeverityEnum threshold = ResultSeverityEnum.ERROR;
        List<Path> files = new ArrayList<>();
        boolean options = true;
        for (String arg : args) {
            if (options && arg.equals("--")) {
                options = false;
            } else if (options && arg.equals("--warnings")) {
                threshold = ResultSeverityEnum.WARNING;
            } else if (options && arg.equals("--all")) {
                threshold = ResultSeverityEnum.INFORMATION;
            } else if (options && (arg.equals("-h") || arg.equals("--help"))) {
                System.err.print(USAGE);
                return 0;
            } else if (options && arg.startsWith("-")) {
                System.err.print("error: unknown option " + arg + "\n" + USAGE);
                return 2;
            } else {
                files.add(Paths.get(arg));
            }
        }
        if (files.isEmpty()) {
            System.err.print(USAGE);
            return 2;
        }
        for (Path file : files) {  // fail before the slow start-up, not half-way through
            if (!Files.isRegularFile(file) || !Files.isReadable(file)) {
                System.err.println("error: cannot read " + file);
                return 2;
            }
        }

        FhirValidator validator = newValidator();
        Gson gson = new GsonBuilder().disableHtmlEscaping().serializeNulls().create();
        boolean anyError = false;
        for (Path file : files) {
            try (BufferedReader reader = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
                String text;
                int lineNo = 0;
                while ((text = reader.readLine()) != null) {
                    lineNo++;
                    if (lineNo == 1 && text.startsWith("\uFEFF")) {  // a byte order mark is not part of the JSON
                        text = text.substring(1);
                    }
                    if (text.isBlank()) {
                        continue;
                    }
                    JsonObject result = validateLine(validator, text, threshold);
                    JsonObject record = new JsonObject();
                    record.addProperty("file", file.toString());
                    record.addProperty("line", lineNo);
                    record.add("resourceType", result.get("resourceType"));
                    record.add("id", result.get("id"));
                    record.add("issues", result.get("issues"));
                    anyError |= result.get("error").getAsBoolean();
                    out.println(gson.toJson(record));
                }
            } catch (IOException | RuntimeException e) {
                out.flush();
                System.err.println("error: reading " + file + ": " + e);
                return 2;
            }
            out.flush();
        }
        out.flush();
        return anyError ? 1 : 0;
    }

    /** The offline R4 validator: core definitions and in-memory terminology only. */
    static FhirValidator newValidator() {
        FhirContext ctx = FhirContext.forR4();
        // No UnknownCodeSystemWarningValidationSupport (deprecated in HAPI 8):
        // the core validator itself reports a code of a code system it does
        // not hold (LOINC, CPT, urn:otrules:...) as a warning, "CodeSystem is
        // unknown and can't be validated", and as an error only where the
        // binding is required, which is right: there only core codes are valid.
        ValidationSupportChain chain = new ValidationSupportChain(
                new DefaultProfileValidationSupport(ctx),            // R4 core StructureDefinitions, ValueSets, CodeSystems
                new CommonCodeSystemsTerminologyService(ctx),        // UCUM, BCP-47, MIME types, ISO countries...
                new InMemoryTerminologyServerValidationSupport(ctx), // expands and checks core value sets
                new SnapshotGeneratingValidationSupport(ctx));
        FhirInstanceValidator instanceValidator = new FhirInstanceValidator(chain);
        instanceValidator.setAnyExtensionsAllowed(true);
        instanceValidator.setErrorForUnknownProfiles(true);  // a meta.profile we cannot check is not "valid"
        FhirValidator validator = ctx.newValidator();
        validator.setValidateAgainstStandardSchema(false);     // the instance validator covers it
        validator.setValidateAgainstStandardSchematron(false);
        validator.registerValidatorModule(instanceValidator);
        return validator;
    }

    /** {resourceType, id, issues, error} for one line of text. */
    static JsonObject validateLine(FhirValidator validator, String text, ResultSeverityEnum threshold) {
        JsonObject result = new JsonObject();
        JsonArray issues = new JsonArray();
        result.add("issues", issues);
        result.add("resourceType", null);
        result.add("id", null);
        JsonElement parsed;
        try {
            parsed = JsonParser.parseString(text);
        } catch (JsonParseException e) {
            Matcher where = COLUMN.matcher(rootMessage(e));
            issues.add(issue("fatal", "(line)", "not JSON" + (where.find() ? " (malformed at column " + where.group(1) + ")" : "")));
            result.addProperty("error", true);
            return result;
        }
        if (!parsed.isJsonObject()) {
            issues.add(issue("fatal", "(line)", "not a JSON object: a FHIR resource is one"));
            result.addProperty("error", true);
            return result;
        }
        JsonObject resource = parsed.getAsJsonObject();
        result.add("resourceType", primitive(resource.get("resourceType")));
        result.add("id", primitive(resource.get("id")));

        boolean error = false;
        ValidationResult outcome;
        try {
            outcome = validator.validateWithResult(text);
        } catch (RuntimeException e) {
            issues.add(issue("fatal", result.get("resourceType").isJsonNull() ? "(line)"
                    : result.get("resourceType").getAsString(), "validator failed: " + rootMessage(e)));
            result.addProperty("error", true);
            return result;
        }
        for (SingleValidationMessage message : outcome.getMessages()) {
            ResultSeverityEnum severity = message.getSeverity();
            if (severity == ResultSeverityEnum.ERROR || severity == ResultSeverityEnum.FATAL) {
                error = true;
            }
            if (severity.ordinal() < threshold.ordinal()) {
                continue;
            }
            String location = message.getLocationString();
            if (location == null || location.isEmpty()) {  // e.g. "Invalid profile": about the whole resource
                location = result.get("resourceType").isJsonNull() ? "(line)" : result.get("resourceType").getAsString();
            }
            issues.add(issue(severity.getCode(), location, message.getMessage()));
        }
        result.addProperty("error", error);
        return result;
    }

    private static JsonObject issue(String severity, String location, String message) {
        JsonObject issue = new JsonObject();
        issue.addProperty("severity", severity);
        issue.addProperty("location", location);
        issue.addProperty("message", message);
        return issue;
    }

    /** A string or number as it is, anything else (missing, object) as null. */
    private static JsonElement primitive(JsonElement element) {
        return element != null && element.isJsonPrimitive() ? element : JsonNull.INSTANCE;
    }

    private static String rootMessage(Throwable e) {
        Throwable root = e;
        while (root.getCause() != null && root.getCause() != root) {
            root = root.getCause();
        }
        return root.getMessage() != null ? root.getMessage() : root.toString();
    }
}
