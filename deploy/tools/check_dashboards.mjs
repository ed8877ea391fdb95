// Type-checks Grafana dashboard JSON against @grafana/schema (the TypeScript types Grafana
// generates from its CUE schema), with the TypeScript compiler:
//
//   node check_dashboards.mjs ../grafana/dashboards/*.json
//
// Each dashboard becomes a TypeScript module in which the JSON is an object literal
// assigned to `Dashboard`, and each panel's `options` and `fieldConfig.defaults.custom`
// to its plugin's `Options` / `FieldConfig` from @grafana/schema's panelcfg types. Object
// literals get TypeScript's excess-property check, so a misspelt or unknown key fails, as
// does a wrong type or an enum value the schema does not list. String enums are compared
// by value (`Loose<T>`): JSON holds "list", not LegendDisplayMode.List.
// Exit status 0 = every file checks; otherwise the compiler's messages are printed.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const ts = require('typescript');
const here = path.dirname(new URL(import.meta.url).pathname);
const schemaDir = path.join(here, 'node_modules', '@grafana', 'schema');
const schemaVersion = JSON.parse(fs.readFileSync(path.join(schemaDir, 'package.json'), 'utf8')).version;

// Panel plugin id -> its generated types module (dist/types/raw/composable/<id>/panelcfg/x/).
function panelTypes(type) {
  const dir = path.join(schemaDir, 'dist', 'types', 'raw', 'composable', type, 'panelcfg', 'x');
  if (!fs.existsSync(dir)) return null;
  const file = fs.readdirSync(dir).find((f) => f.endsWith('.d.ts'));
  return file ? path.join(dir, file.replace(/\.d\.ts$/, '')) : null;
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node check_dashboards.mjs DASHBOARD.json...');
  process.exit(2);
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'dbproxy-dashboards-'));
const sources = [];
const problems = [];
for (const file of files) {
  const board = JSON.parse(fs.readFileSync(file, 'utf8'));
  const imports = new Map();
  const checks = [];
  const panels = [];
  for (const p of board.panels ?? []) {
    panels.push(p);
    for (const child of p.panels ?? []) panels.push(child);
  }
  panels.forEach((panel, i) => {
    if (panel.type === 'row') return;
    const mod = panelTypes(panel.type);
    if (mod === null) {
      problems.push(`${file}: panel "${panel.title}": no @grafana/schema types for panel type "${panel.type}"`);
      return;
    }
    const alias = `p_${panel.type.replace(/\W/g, '_')}`;
    imports.set(alias, mod);
    // Plugins without field options (stat, text, logs) export no FieldConfig: then `custom`
    // must be absent or empty.
    const hasFieldConfig = /export interface FieldConfig\b/.test(fs.readFileSync(`${mod}.d.ts`, 'utf8'));
    const customType = hasFieldConfig ? `Loose<${alias}.FieldConfig>` : 'Record<string, never>';
    checks.push(
      `// panel ${panel.id} "${panel.title}" (${panel.type})\n` +
        `export const options_${i}: Loose<${alias}.Options> = ${JSON.stringify(panel.options ?? {}, null, 2)};\n` +
        `export const custom_${i}: ${customType} = ${JSON.stringify(panel.fieldConfig?.defaults?.custom ?? {}, null, 2)};\n`,
    );
  });
  const lines = [
    `import type { Dashboard, AnnotationQuery, DataQuery } from ${JSON.stringify(path.join(schemaDir, 'dist', 'types', 'index'))};`,
    ...[...imports].map(([alias, mod]) => `import type * as ${alias} from ${JSON.stringify(mod)};`),
    'type Loose<T> = T extends string ? `${T}` : T extends (infer U)[] ? Loose<U>[] : T extends object ? { [K in keyof T]: Loose<T[K]> } : T;',
    `// ${file}`,
    // Annotation queries are datasource-specific: @grafana/schema types their target as a
    // bare DataQuery and knows none of the Prometheus annotation's keys. These are the keys
    // Grafana's Prometheus datasource reads (PromQuery expr/interval in `target`; title,
    // text, tag and time options beside it); everything else is checked as the schema says.
    'type PromAnnotation = Omit<AnnotationQuery, "target"> & { target?: DataQuery & { expr: string; interval?: string }; titleFormat?: string; textFormat?: string; tagKeys?: string; useValueForTime?: boolean };',
    'type Board = Omit<Dashboard, "annotations"> & { annotations?: { list?: PromAnnotation[] } };',
    `export const dashboard: Loose<Board> = ${JSON.stringify(board, null, 2)};`,
    ...checks,
  ];
  const out = path.join(work, `${path.basename(file, '.json')}.ts`);
  fs.writeFileSync(out, lines.join('\n') + '\n');
  sources.push(out);
}

const program = ts.createProgram(sources, {
  strict: true,
  noEmit: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.CommonJS,
  moduleResolution: ts.ModuleResolutionKind.Node10,
  skipLibCheck: true,
  types: [],
});
for (const d of ts.getPreEmitDiagnostics(program)) {
  const msg = ts.flattenDiagnosticMessageText(d.messageText, '\n');
  if (d.file) {
    const { line } = d.file.getLineAndCharacterOfPosition(d.start);
    const text = d.file.text.split('\n')[line].trim();
    problems.push(`${path.basename(d.file.fileName)}:${line + 1}: ${msg}\n    ${text}`);
  } else {
    problems.push(msg);
  }
}
if (problems.length) {
  console.error(problems.join('\n'));
  console.error(`${problems.length} problem(s); generated TypeScript kept in ${work}`);
  process.exit(1);
}
fs.rmSync(work, { recursive: true, force: true });
console.log(`${files.length} dashboard(s) match @grafana/schema ${schemaVersion}`);
