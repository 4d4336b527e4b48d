// The project's documentation: every relative link in the Markdown points to
// a file that exists, every #anchor to a heading that exists (with GitHub's
// heading ids), every option of the API documents its default, the layout names
// every library file, and the README stays one short page whose benchmark figures
// are those of the performance guide.

import assert from "node:assert/strict";
import { dirname, join, relative } from "node:path";

const ROOT = new URL("..", import.meta.url).pathname;

/** Directories never searched for Markdown: installed packages and generated output. */
const SKIPPED_DIRECTORIES = new Set([".git", "node_modules", "coverage", "bench/results"]);

/** A link that doesn't resolve: where it is, what it points to, and why it fails. */
interface BrokenLink {
  file: string;
  line: number;
  target: string;
  problem: string;
}

/** Every `.md` file under `root`, as paths relative to it, sorted. */
async function markdownFiles(root: string, directory = ""): Promise<string[]> {
  const found: string[] = [];
  for await (const entry of Deno.readDir(join(root, directory))) {
    const path = directory === "" ? entry.name : `${directory}/${entry.name}`;
    if (
      entry.isDirectory && !SKIPPED_DIRECTORIES.has(entry.name) && !SKIPPED_DIRECTORIES.has(path)
    ) {
      found.push(...await markdownFiles(root, path));
    } else if (entry.isFile && entry.name.endsWith(".md")) {
      found.push(path);
    }
  }
  return found.sort();
}

/**
 * `text` with the content of fenced code blocks blanked out (line breaks
 * kept, so line numbers still match): lines in code are neither links nor
 * headings.
 */
function withoutCodeBlocks(text: string): string {
  const lines = text.split("\n");
  let fence: string | undefined;
  for (let i = 0; i < lines.length; i++) {
    const opener = lines[i].match(/^ {0,3}(`{3,}|~{3,})/)?.[1];
    if (fence === undefined) {
      if (opener !== undefined) {
        fence = opener;
        lines[i] = "";
      }
    } else {
      if (opener !== undefined && opener[0] === fence[0] && opener.length >= fence.length) {
        fence = undefined;
      }
      lines[i] = "";
    }
  }
  return lines.join("\n");
}

/** `text` with inline code spans blanked out too: a link in code is not a link. */
function withoutCode(text: string): string {
  return withoutCodeBlocks(text).replace(
    /(`+)[\s\S]*?[^`]\1(?!`)/g,
    (span) => span.replace(/[^\n]/g, ""),
  );
}

/** The text of a heading as rendered: no code backticks, links as their text, no emphasis marks. */
function headingText(source: string): string {
  return source
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1")
    .replace(/`/g, "")
    .replace(/\*\*|__|\*/g, "");
}

/**
 * GitHub's id for each heading, in order: lower case, punctuation dropped
 * (letters, digits, `_` and `-` kept), each space a `-`; a repeated id gets
 * `-1`, `-2`… in order of appearance.
 */
function headingIds(headings: string[]): string[] {
  const occurrences = new Map<string, number>();
  return headings.map((heading) => {
    const base = headingText(heading).trim().toLowerCase()
      .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, "")
      .replace(/ /g, "-");
    let id = base;
    while (occurrences.has(id)) {
      const count = (occurrences.get(base) ?? 0) + 1;
      occurrences.set(base, count);
      id = `${base}-${count}`;
    }
    occurrences.set(id, 0);
    return id;
  });
}

/** The anchors a Markdown text defines: its heading ids and any HTML `id` / `name`. */
function anchors(text: string): Set<string> {
  const prose = withoutCodeBlocks(text);
  const headings = [...prose.matchAll(/^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/gm)]
    .map((match) => match[1]);
  const html = [...prose.matchAll(/<[a-z]+\s[^>]*\b(?:id|name)="([^"]+)"/gi)]
    .map((match) => match[1]);
  return new Set([...headingIds(headings), ...html]);
}

/** Every link target in a Markdown text, with its line: inline links, images, definitions, HTML. */
function linkTargets(text: string): { line: number; target: string }[] {
  const prose = withoutCode(text);
  const patterns = [
    /!?\[(?:[^[\]]|\[[^[\]]*\])*\]\(\s*(<[^>\n]*>|[^)\s]+)(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)/g,
    /^ {0,3}\[[^\]\n]+\]:[ \t]*(<[^>\n]*>|\S+)/gm,
    /<(?:a|img)\s[^>]*\b(?:href|src)="([^"]+)"/gi,
  ];
  const targets: { index: number; target: string }[] = [];
  for (const pattern of patterns) {
    for (const match of prose.matchAll(pattern)) {
      targets.push({ index: match.index, target: match[1].replace(/^<(.*)>$/, "$1") });
    }
  }
  return targets
    .sort((a, b) => a.index - b.index)
    .map(({ index, target }) => ({ line: prose.slice(0, index).split("\n").length, target }));
}

async function pathKind(path: string): Promise<"file" | "directory" | undefined> {
  try {
    const info = await Deno.stat(path);
    return info.isDirectory ? "directory" : "file";
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

/** The relative links of the Markdown files under `root` that don't resolve. */
async function brokenLinks(root: string): Promise<BrokenLink[]> {
  const broken: BrokenLink[] = [];
  const anchorCache = new Map<string, Set<string>>();
  const anchorsOf = async (path: string): Promise<Set<string>> => {
    let found = anchorCache.get(path);
    if (found === undefined) {
      found = anchors(await Deno.readTextFile(path));
      anchorCache.set(path, found);
    }
    return found;
  };
  for (const file of await markdownFiles(root)) {
    const text = await Deno.readTextFile(join(root, file));
    for (const { line, target } of linkTargets(text)) {
      // Absolute URLs (https:, mailto:…) and protocol-relative ones are not checked here.
      if (/^[a-z][a-z0-9+.-]*:|^\/\//i.test(target)) continue;
      const report = (problem: string) => broken.push({ file, line, target, problem });
      const hash = target.indexOf("#");
      const pathPart = decodeURIComponent(hash === -1 ? target : target.slice(0, hash));
      const anchor = hash === -1 ? undefined : decodeURIComponent(target.slice(hash + 1));
      if (pathPart.startsWith("/")) {
        report("absolute path: links must be relative to the file");
        continue;
      }
      const resolved = pathPart === "" ? join(root, file) : join(root, dirname(file), pathPart);
      if (relative(root, resolved).startsWith("..")) {
        report("points outside the repository");
        continue;
      }
      const kind = await pathKind(resolved);
      if (kind === undefined) {
        report("no such file or directory");
      } else if (anchor !== undefined) {
        if (kind === "file" && resolved.endsWith(".md")) {
          if (!(await anchorsOf(resolved)).has(anchor)) report(`no heading with id "${anchor}"`);
        } else if (kind === "directory" || !/^L\d+(-L\d+)?$/.test(anchor)) {
          report(`"#${anchor}" can only point into a Markdown file (or be a line: #L12)`);
        }
      }
    }
  }
  return broken;
}

Deno.test("docs: heading ids are GitHub's (lower case, no punctuation, numbered repeats)", () => {
  assert.deepEqual(
    headingIds([
      "Servers and clients",
      "`errors` — one hierarchy",
      "What else differs from `serve()`",
      "Compression (permessage-deflate)",
      "A server",
      "A server",
      "A server",
      "scaling_out: **Redis** and [BroadcastChannel](x.md)",
      "Étapes, 10 000 clients",
    ]),
    [
      "servers-and-clients",
      "errors--one-hierarchy",
      "what-else-differs-from-serve",
      "compression-permessage-deflate",
      "a-server",
      "a-server-1",
      "a-server-2",
      "scaling_out-redis-and-broadcastchannel",
      "étapes-10-000-clients",
    ],
  );
});

Deno.test("docs: broken links and anchors are reported with file, line and reason", async () => {
  const root = await Deno.makeTempDir();
  try {
    await Deno.mkdir(join(root, "docs"));
    await Deno.writeTextFile(
      join(root, "README.md"),
      [
        "# Title",
        "",
        "## Part two",
        "[ok](docs/guide.md#usage) [ok](#part-two) [ok](docs/) [ok](https://example.com/x)",
        "[missing file](docs/nope.md)",
        "`[in code](nowhere.md)` and [bad anchor](docs/guide.md#nope)",
        "```md",
        "[in a code block](nowhere.md)",
        "```",
        "![image](docs/missing.png) [same file](#title-2)",
        "[escape](../outside.md) [reference]: docs/gone.md",
        "",
        "[defined]: docs/gone.md",
      ].join("\n"),
    );
    await Deno.writeTextFile(
      join(root, "docs", "guide.md"),
      "# Guide\n\n## Usage\n\n[up](../README.md#title)\n",
    );
    assert.deepEqual(await brokenLinks(root), [
      { file: "README.md", line: 5, target: "docs/nope.md", problem: "no such file or directory" },
      {
        file: "README.md",
        line: 6,
        target: "docs/guide.md#nope",
        problem: 'no heading with id "nope"',
      },
      {
        file: "README.md",
        line: 10,
        target: "docs/missing.png",
        problem: "no such file or directory",
      },
      { file: "README.md", line: 10, target: "#title-2", problem: 'no heading with id "title-2"' },
      {
        file: "README.md",
        line: 11,
        target: "../outside.md",
        problem: "points outside the repository",
      },
      { file: "README.md", line: 13, target: "docs/gone.md", problem: "no such file or directory" },
    ]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("docs: every relative link and #anchor in the project's Markdown resolves", async () => {
  assert.deepEqual(await brokenLinks(ROOT), []);
});

/** The shape of `deno doc --json` that the option check reads. */
interface DocJson {
  nodes: Record<string, {
    symbols: {
      name: string;
      declarations: {
        kind: string;
        def?: {
          properties?: {
            name: string;
            optional: boolean;
            jsDoc?: { tags?: { kind: string }[] };
          }[];
        };
      }[];
    }[];
  }>;
}

Deno.test("docs: every option of the public API documents its @default", async () => {
  const { success, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--json", "mod.ts"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(success, new TextDecoder().decode(stderr));
  const doc: DocJson = JSON.parse(new TextDecoder().decode(stdout));
  const missing: string[] = [];
  for (const module of Object.values(doc.nodes)) {
    for (const symbol of module.symbols) {
      // Options objects: FooOptions, FooInit (as in RequestInit), HttpLimits.
      if (!/(Options|Init|Limits)$/.test(symbol.name)) continue;
      for (const declaration of symbol.declarations) {
        if (declaration.kind !== "interface") continue;
        for (const property of declaration.def?.properties ?? []) {
          const tags = property.jsDoc?.tags ?? [];
          if (property.optional && !tags.some((tag) => tag.kind === "default")) {
            missing.push(`${symbol.name}.${property.name}`);
          }
        }
      }
    }
  }
  assert.deepEqual(missing, []);
});

/**
 * The first table after `heading` in a Markdown text: each row as a record
 * from column header to cell text.
 */
function tableAfter(text: string, heading: string): Record<string, string>[] {
  const lines = text.split("\n");
  const start = lines.findIndex((line) => line.trim() === heading);
  assert.ok(start >= 0, `no heading "${heading}"`);
  const first = lines.findIndex((line, i) => i > start && line.startsWith("|"));
  const table: string[] = [];
  for (let i = first; i < lines.length && lines[i].startsWith("|"); i++) table.push(lines[i]);
  const cells = (line: string) => line.slice(1, -1).split("|").map((cell) => cell.trim());
  const [header, , ...rows] = table.map(cells);
  return rows.map((row) => Object.fromEntries(header.map((name, i) => [name, row[i]])));
}

Deno.test("docs: the README's performance rows are those of the full results", async () => {
  const readme = tableAfter(await Deno.readTextFile(join(ROOT, "README.md")), "## Performance");
  const full = tableAfter(
    await Deno.readTextFile(join(ROOT, "docs", "performance.md")),
    "## Full results",
  );
  assert.ok(readme.length > 0, "no performance table in README.md");
  const sameRows = readme.map((row) => {
    const match = full.find((candidate) => candidate.scenario === row.scenario) ?? {};
    return Object.fromEntries(Object.keys(row).map((column) => [column, match[column]]));
  });
  assert.deepEqual(sameRows, readme);
});

Deno.test("docs: the layout in docs/design.md names every library file", async () => {
  const design = await Deno.readTextFile(join(ROOT, "docs", "design.md"));
  const unnamed: string[] = [];
  for await (const entry of Deno.readDir(ROOT)) {
    if (entry.isFile && entry.name.endsWith(".ts") && !design.includes(`\`${entry.name}\``)) {
      unnamed.push(entry.name);
    }
  }
  assert.deepEqual(unnamed.sort(), []);
});

Deno.test("docs: README.md stays under 12 KB", async () => {
  const { size } = await Deno.stat(join(ROOT, "README.md"));
  assert.ok(size < 12 * 1024, `README.md is ${size} bytes; the limit is ${12 * 1024}`);
});
