// Unit tests of the chat page's Markdown renderer, on its own: the code
// between the `markdown: begin` / `markdown: end` comments of
// src/page/chat.html, run against a tiny fake DOM (just the calls the
// renderer may make: createElement, createTextNode, append, remove,
// setAttribute, className, textContent, addEventListener).
//
//     node --test tests/browser/markdown.test.mjs
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

const PAGE = new URL("../../src/page/chat.html", import.meta.url);
const html = readFileSync(PAGE, "utf8");
const BEGIN = "// ==== markdown: begin ====", END = "// ==== markdown: end ====";
const source = html.slice(html.indexOf(BEGIN), html.indexOf(END) + END.length);
assert.ok(html.includes(BEGIN) && html.includes(END), "the markers are in chat.html");

// ---- the fake DOM
let removed = 0;
class Base {
  constructor() { this.parent = null; }
  remove() {
    if (!this.parent) return;
    const c = this.parent.children;
    c.splice(c.indexOf(this), 1);
    this.parent = null;
    removed++;
  }
}
class Text extends Base {
  constructor(s) { super(); this.data = String(s); }
  get textContent() { return this.data; }
}
class Element extends Base {
  constructor(tag) { super(); this.tag = tag; this.attrs = new Map(); this.children = []; this.listeners = 0; }
  set className(v) { this.attrs.set("class", String(v)); }
  setAttribute(k, v) { this.attrs.set(String(k).toLowerCase(), String(v)); }
  addEventListener() { this.listeners++; }
  append(...nodes) {
    for (const n of nodes) {
      assert.ok(n instanceof Base, "only nodes are appended (never a string that could be markup)");
      if (n.parent) n.remove();
      n.parent = this;
      this.children.push(n);
    }
  }
  set textContent(s) { for (const c of this.children) c.parent = null; this.children = []; if (s !== "") this.append(new Text(s)); }
  get textContent() { return this.children.map((c) => c.textContent).join(""); }
}
// Anything else the renderer touched would throw: it has no innerHTML.
const document = Object.freeze({
  createElement: (t) => new Element(t),
  createTextNode: (s) => new Text(s),
});
const markdown = new Function("document", "navigator", `${source}\nreturn markdown;`)(document, {});

const esc = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const serialize = (n) => n instanceof Text ? esc(n.data)
  : `<${n.tag}${[...n.attrs].map(([k, v]) => ` ${k}="${esc(v)}"`).join("")}>${n.children.map(serialize).join("")}</${n.tag}>`;
function root(src) {
  const r = new Element("div");
  markdown.render(r, src);
  return r;
}
const render = (src) => root(src).children.map(serialize).join("");
const A = (href, text = href) => `<a href="${esc(href)}" rel="noopener noreferrer" target="_blank">${esc(text)}</a>`;
const CODE = (lang, text) => `<div class="code"><div class="bar"><span>${lang}</span><button type="button">Copy</button></div>` +
  `<pre><code${lang ? ` class="language-${lang}"` : ""}>${esc(text)}</code></pre></div>`;

// ---- what each construct renders as
const CASES = [
  ["plain text", "<p>plain text</p>"],
  ["two\nlines", "<p>two\nlines</p>"],
  ["para one\n\npara two", "<p>para one</p><p>para two</p>"],
  ["**strong** and __strong__", "<p><strong>strong</strong> and <strong>strong</strong></p>"],
  ["*em* and _em_", "<p><em>em</em> and <em>em</em></p>"],
  ["***both***", "<p><strong><em>both</em></strong></p>"],
  ["**bold *it* bold**", "<p><strong>bold <em>it</em> bold</strong></p>"],
  ["snake_case_name and 2 * 3 * 4", "<p>snake_case_name and 2 * 3 * 4</p>"],
  ["**unclosed and *also", "<p>**unclosed and *also</p>"],
  ["\\*not em\\* \\`x\\`", "<p>*not em* `x`</p>"],
  ["use `let x = 1;` here", "<p>use <code>let x = 1;</code> here</p>"],
  ["``a ` b``", "<p><code>a ` b</code></p>"],
  ["` `` `", "<p><code>``</code></p>"],
  ["`unclosed", "<p>`unclosed</p>"],
  ["`**not bold**`", "<p><code>**not bold**</code></p>"],
  ["# One\n## Two\n###### Six ##", "<h1>One</h1><h2>Two</h2><h6>Six</h6>"],
  ["#hashtag\n####### seven", "<p>#hashtag\n####### seven</p>"],
  ["# C# and *em*", "<h1>C# and <em>em</em></h1>"],
  ["# closed ###   \n## #\n#  spaced  #  \n# not#", "<h1>closed</h1><h2></h2><h1>spaced</h1><h1>not#</h1>"],
  ["- a\n- b\n* c", "<ul><li>a</li><li>b</li></ul><ul><li>c</li></ul>"],
  ["1. one\n2. two\n10. ten", "<ol><li>one</li><li>two</li><li>ten</li></ol>"],
  ["3) three\n4) four", '<ol start="3"><li>three</li><li>four</li></ol>'],
  ["Steps:\n1. go\n2. stop", "<p>Steps:</p><ol><li>go</li><li>stop</li></ol>"],
  ["In 2024.\n2. not a list", "<p>In 2024.\n2. not a list</p>"],
  ["Points:\n- a\n- b", "<p>Points:</p><ul><li>a</li><li>b</li></ul>"],
  ["- a\n  - nested\n    1. deep\n- b", "<ul><li>a<ul><li>nested<ol><li>deep</li></ol></li></ul></li><li>b</li></ul>"],
  ["- a\nlazy\n- b", "<ul><li>a\nlazy</li><li>b</li></ul>"],
  ["- a\n\n- b\n\n  more", "<ul><li>a</li><li>b<p>more</p></li></ul>"],
  ["- a\n\nafter", "<ul><li>a</li></ul><p>after</p>"],
  ["-not a list\n-1 neither", "<p>-not a list\n-1 neither</p>"],
  ["> quoted *text*\n> more\nlazy\n\nout", "<blockquote><p>quoted <em>text</em>\nmore\nlazy</p></blockquote><p>out</p>"],
  ["> # head\n> - item", "<blockquote><h1>head</h1><ul><li>item</li></ul></blockquote>"],
  ["a\n\n---\n\n* * *", "<p>a</p><hr></hr><hr></hr>"],
  ["```python\nprint('hi')\n\n  indented\n```", CODE("python", "print('hi')\n\n  indented")],
  ["```\nno lang\n```", CODE("", "no lang")],
  ["~~~ js extra words\nx\n~~~", CODE("js", "x")],
  ["````md\n```\ninner\n```\n````", CODE("md", "```\ninner\n```")],
  ["```c++\nint x;\n```", CODE("c++", "int x;")],
  ["```\nunclosed\nfence", CODE("", "unclosed\nfence")],
  ["  ```\n  two\n    four\n  ```", CODE("", "two\n  four")],
  ["1. Install:\n   ```sh\n   pip install x\n   ```\n2. Run", `<ol><li>Install:${CODE("sh", "pip install x")}</li><li>Run</li></ol>`],
  ["text\n```\ncode\n```", `<p>text</p>${CODE("", "code")}`],
  ["```not a fence``` inline", "<p><code>not a fence</code> inline</p>"],
  ["[site](https://example.com/a?b=1&c=2)", `<p>${A("https://example.com/a?b=1&c=2", "site")}</p>`],
  ["[**bold** link](http://x.org)", '<p><a href="http://x.org" rel="noopener noreferrer" target="_blank"><strong>bold</strong> link</a></p>'],
  ['[t](https://x.org/p_(q) "title")', `<p>${A("https://x.org/p_(q)", "t")}</p>`],
  ["[mail](mailto:a@b.example)", `<p>${A("mailto:a@b.example", "mail")}</p>`],
  ["<https://x.org/a>", `<p>${A("https://x.org/a")}</p>`],
  ["see https://x.org/wiki/A_(b). Or (http://y.org).", `<p>see ${A("https://x.org/wiki/A_(b)")}. Or (${A("http://y.org")}).</p>`],
  ["**https://x.org**", `<p><strong>${A("https://x.org")}</strong></p>`],
  ["[a [nested] b](https://x.org)", `<p>[a [nested] b](${A("https://x.org")})</p>`],
  ["[link [inner](https://a.org)](https://b.org)", `<p>[link ${A("https://a.org", "inner")}](${A("https://b.org")})</p>`],
  ["[rel](/relative) [frag](#top) [proto](//x.org)", "<p>[rel](/relative) [frag](#top) [proto](//x.org)</p>"],
  ["crlf\r\nlines\r\n\r\n- x\r\n", "<p>crlf\nlines</p><ul><li>x</li></ul>"],
  ["\tindented with a tab", "<p>indented with a tab</p>"],
  ["", ""],
  ["   \n\n  ", ""],
];

test("each construct renders as its element", () => {
  for (const [src, want] of CASES) assert.equal(render(src), want, JSON.stringify(src));
});

// ---- hostile input: nothing but allowed elements, attributes and addresses
const HOSTILE = [
  "<script>window.pwned = 1</script>",
  "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
  "<img src=x onerror=alert(1)>",
  "<svg onload=alert(1)><circle/></svg>",
  "<svg><script>alert(1)</script></svg>",
  "<iframe srcdoc=\"<script>alert(1)</script>\"></iframe>",
  "<a href=\"javascript:alert(1)\">click</a>",
  "<div style=\"background:url(javascript:alert(1))\">x</div>",
  "<style>body{display:none}</style>",
  "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
  "<!-- comment --><![CDATA[x]]>",
  "&lt;script&gt;alert(1)&lt;/script&gt; &#60;img&#62;",
  "**<b onmouseover=alert(1)>bold</b>**",
  "`<script>alert(1)</script>`",
  "```html\n<script>alert(1)</script>\n<img src=x onerror=alert(1)>\n```",
  "```\"><img src=x onerror=alert(1)>\ncode\n```",
  "```javascript:alert(1)\nx\n```",
  "[x](javascript:alert(1))",
  "[x](JavaScript:alert(1))",
  "[x](JAVASCRIPT:alert(document.cookie))",
  "[x]( javascript:alert(1))",
  "[x](\tjavascript:alert(1))",
  "[x](\njavascript:alert(1))",
  "[x](java\tscript:alert(1))",
  "[x](java\nscript:alert(1))",
  "[x](java\u0000script:alert(1))",
  "[x](\u0001javascript:alert(1))",
  "[x](&#106;avascript:alert(1))",
  "[x](&#x6A;avascript:alert(1))",
  "[x](javascript&#58;alert(1))",
  "[x](javascript&colon;alert(1))",
  "[x](%6Aavascript:alert(1))",
  "[x](javas%09cript:alert(1))",
  "[x](\uFF4Aavascript:alert(1))",
  "[x](javascript://%0Aalert(1))",
  "[x](javascript:alert(1) \"title\")",
  "[x](<javascript:alert(1)>)",
  "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
  "[x](DATA:text/html,<script>alert(1)</script>)",
  "[x](data:image/svg+xml,<svg onload=alert(1)>)",
  "[x](vbscript:msgbox(1))",
  "[x](VBScript:msgbox(1))",
  "[x](file:///etc/passwd)",
  "[x](blob:https://x.org/uuid)",
  "[x](filesystem:https://x.org/temporary/x)",
  "[x](https:javascript:alert(1))",
  "[x](http:alert(1))",
  "[x](https:/\\evil.example)",
  "[x](//evil.example)",
  "[x](https://x.org\" onclick=\"alert(1))",
  "[x](https://x.org/\"><script>alert(1)</script>)",
  "[x](https://x.org/'onmouseover='alert(1))",
  "[x](mailto:a@b.example?body=<script>alert(1)</script>)",
  "<javascript:alert(1)>",
  "<JAVASCRIPT:alert(1)>",
  "<data:text/html,<script>alert(1)</script>>",
  "<vbscript:msgbox(1)>",
  "javascript:alert(1) data:text/html,x vbscript:x",
  "https://x.org/<script>alert(1)</script>",
  "https://x.org\u2028javascript:alert(1)",
  "xhttps://glued.example",
  "![img](https://x.org/track.png) ![svg](data:image/svg+xml;base64,PHN2Zz4=)",
  "[ref][1]\n\n[1]: javascript:alert(1)",
  "> <script>alert(1)</script>\n> [x](javascript:alert(1))",
  "- <img src=x onerror=alert(1)>\n- [x](javascript:alert(1))",
  "# <svg onload=alert(1)>",
  "\u0000\u0001\u202e\ufeff control characters",
  "__proto__ constructor toString hasOwnProperty",
];
const ALLOWED = {
  p: [], h1: [], h2: [], h3: [], h4: [], h5: [], h6: [], strong: [], em: [], hr: [],
  ul: [], li: [], blockquote: [], pre: [], span: [],
  ol: ["start"], code: ["class"], div: ["class"], button: ["type"], a: ["href", "rel", "target"],
};
function inert(node, path) {
  for (const c of node.children) {
    if (c instanceof Text) continue;
    const where = `${path} > ${c.tag}`;
    assert.ok(Object.hasOwn(ALLOWED, c.tag), `unexpected element <${c.tag}> at ${where}`);
    for (const [k, v] of c.attrs) {
      assert.ok(ALLOWED[c.tag].includes(k), `unexpected attribute ${k}="${v}" on ${where}`);
      if (k === "class") assert.match(v, c.tag === "div" ? /^(code|bar)$/ : /^language-[\w+#.-]+$/, where);
      if (k === "start") assert.match(v, /^\d+$/, where);
      if (k === "type") assert.equal(v, "button", where);
      if (k === "rel") assert.equal(v, "noopener noreferrer", where);
      if (k === "target") assert.equal(v, "_blank", where);
      if (k === "href") {
        assert.match(v, /^(https?:\/\/|mailto:)[^\s\x00-\x1f\x7f]+$/i, where);
        assert.ok(["http:", "https:", "mailto:"].includes(new URL(v).protocol), where);
      }
    }
    if (c.tag === "a") assert.equal(c.attrs.get("rel"), "noopener noreferrer", where);
    if (c.tag === "button") assert.ok(c.listeners === 1 && c.textContent === "Copy", where);
    inert(c, where);
  }
}
const hrefs = (n) => n instanceof Text ? [] : [...(n.attrs.has("href") ? [n.attrs.get("href")] : []), ...n.children.flatMap(hrefs)];

test("hostile input is inert: only allowed elements and attributes, links only to http(s)/mailto", () => {
  for (const src of HOSTILE) {
    const r = root(src);
    inert(r, JSON.stringify(src));
    for (const h of hrefs(r)) assert.match(h, /^(https?:|mailto:)/i, JSON.stringify(src));
    // Everything the source said is still there, as text (a fence's info
    // string shows only as its sanitized language name).
    if (/^(```|~~~)/.test(src)) continue;
    const stripped = src.replace(/\\/g, "").replace(/\s+/g, "");
    const shown = r.textContent.replace(/\s+/g, "").replace(/Copy/g, "");
    for (const word of ["script", "onerror", "onload", "javascript", "data:", "vbscript"]) {
      const n = (s) => s.toLowerCase().split(word).length;
      assert.ok(n(shown) >= n(stripped), `${JSON.stringify(src)}: "${word}" is shown as text`);
    }
  }
  // Every hostile link is no link at all.
  for (const src of HOSTILE.filter((s) => /^\[x\]|^</.test(s) && !/https?:\/\/|mailto:/.test(s))) {
    assert.deepEqual(hrefs(root(src)), [], JSON.stringify(src));
  }
  assert.deepEqual(hrefs(root("[x](https://x.org/%22%3E%3Cscript%3E)")), ["https://x.org/%22%3E%3Cscript%3E"]);
});

test("safeHref allows http, https and mailto only", () => {
  const ok = ["https://x.org", "HTTP://X.ORG/a?b#c", "mailto:a@b.example", "https://x.org/a%20b"];
  const bad = [
    "javascript:alert(1)", " https://x.org", "https://x.org ", "https://x .org", "java\tscript:x",
    "data:text/html,x", "vbscript:x", "ftp://x.org", "//x.org", "/x", "#x", "https:x.org",
    "https://", "mailto:", "\u0000https://x.org", "https://x.org\n", "", null, undefined, 42,
  ];
  for (const u of ok) assert.equal(markdown.safeHref(u), u, u);
  for (const u of bad) assert.equal(markdown.safeHref(u), null, String(u));
});

// ---- pathological input: no stack overflow, no quadratic blow-up
test("deep nesting and runaway delimiters stay fast and shown", () => {
  const big = [
    ">".repeat(20000) + " deep",
    "- ".repeat(3000) + "deep",
    Array.from({ length: 400 }, (_, i) => " ".repeat(2 * i) + "- x").join("\n"),
    "*".repeat(20001),
    "*a ".repeat(20000),
    "**a ".repeat(10000),
    "_a ".repeat(20000),
    "`".repeat(5000) + " x",
    "` ``".repeat(5000),
    "[".repeat(20000) + "x",
    "[x](".repeat(10000),
    "[a](https://x.org)".repeat(5000),
    "<".repeat(20000),
    "https://x.org/" + "(".repeat(20000),
    "*_".repeat(10000),
    "```\n".repeat(5000),
    "# x\n".repeat(10000),
    "\\".repeat(20001),
    "# a" + " ".repeat(20000) + "b",
    "# " + "#".repeat(20000) + "a",
    "# a " + "# ".repeat(10000) + "b",
    "https://x.org/" + "(".repeat(20000) + ")".repeat(20000),
    "https://x.org/" + ")".repeat(20000),
    "- a" + " ".repeat(20000) + "b\n" + " ".repeat(20000) + "c",
    "> a\u2028" + " ".repeat(20000) + "b",
    "```\u2028" + " ".repeat(20000) + "\nx",
    "a" + "  \n".repeat(10000),
    ("[" + " ".repeat(100) + "](").repeat(200),
    ("* " + "a ".repeat(50) + "\n").repeat(400),
  ];
  let slowest = 0;
  for (const src of big) {
    const t0 = performance.now();
    const r = root(src);
    const ms = performance.now() - t0;
    slowest = Math.max(slowest, ms);
    inert(r, "big");
    assert.ok(ms < 2000, `${JSON.stringify(src.slice(0, 20))}… rendered in ${ms.toFixed(0)} ms`);
    assert.ok(r.children.length > 0, JSON.stringify(src.slice(0, 20)));
  }
  console.log(`# node: ${big.length} pathological inputs of up to 40 000 characters, slowest ${slowest.toFixed(0)} ms`);
});

// ---- streaming: the same DOM as rendering at once; complete blocks kept
const DOC = `# Release notes

Some **bold** text, *emphasis*, \`code\` and a [link](https://example.com/x).
A second line of the same paragraph.

- first point
- second point with \`code\`
  - nested point
- third point

1. one
2. two

\`\`\`python
def f(x):
    return x * 2  # *not emphasis*

print(f(21))
\`\`\`

> A quote with **bold**
> over two lines.

---

<script>window.pwned = 1</script> and [bad](javascript:alert(1)).
~~~
tilde fence
~~~
Last paragraph, no newline at the end`;

function streamed(src, tokens) {
  const r = new Element("div");
  const s = markdown.stream(r);
  let pos = 0;
  for (const t of tokens) {
    const before = [...r.children];
    s.push(t);
    assert.deepEqual(r.children, before, "push alone draws nothing");
    s.flush();
    pos += t.length;
    // Only the open end was made again: what went is a suffix of what was, at most 2 blocks.
    const kept = before.filter((n) => n.parent === r);
    assert.deepEqual(kept, before.slice(0, kept.length), "blocks are removed from the end only");
    assert.ok(before.length - kept.length <= 2, `at most the 2 open blocks are re-made (${before.length - kept.length})`);
    assert.deepEqual(kept, r.children.slice(0, kept.length), "kept blocks stay in place");
  }
  assert.equal(s.text, src);
  return r;
}
const words = (s) => s.match(/\s*\S+\s*|\s+/g) || [];

test("streaming word by word or char by char ends as the whole render, keeping complete blocks", () => {
  const docs = [DOC, ...CASES.map(([s]) => s), ...HOSTILE];
  for (const src of docs) {
    const want = render(src);
    assert.equal(streamed(src, words(src)).children.map(serialize).join(""), want, `words: ${JSON.stringify(src)}`);
    assert.equal(streamed(src, [...src]).children.map(serialize).join(""), want, `chars: ${JSON.stringify(src)}`);
  }
  // Complete blocks are made once: streaming DOC char by char removes few nodes.
  removed = 0;
  const r = streamed(DOC, [...DOC]);
  const first = r.children[0];
  assert.equal(first.tag, "h1");
  assert.ok(removed <= 2 * DOC.length, `${removed} removals for ${DOC.length} pushes`);
});

test("a half-open fence or list renders sensibly while it streams", () => {
  const r = new Element("div");
  const s = markdown.stream(r);
  s.push("Here:\n\n```py\nprint(1)\n"); s.flush();
  assert.equal(r.children.map(serialize).join(""), `<p>Here:</p>${CODE("py", "print(1)\n")}`);
  s.push("``"); s.flush();
  assert.equal(r.children.map(serialize).join(""), `<p>Here:</p>${CODE("py", "print(1)\n``")}`);
  s.push("`\n- a"); s.flush();
  assert.equal(r.children.map(serialize).join(""), `<p>Here:</p>${CODE("py", "print(1)")}<ul><li>a</li></ul>`);
  s.push("\n- **b"); s.flush();
  assert.equal(r.children.map(serialize).join(""), `<p>Here:</p>${CODE("py", "print(1)")}<ul><li>a</li><li>**b</li></ul>`);
  s.push("**"); s.flush();
  assert.equal(r.children.map(serialize).join(""), `<p>Here:</p>${CODE("py", "print(1)")}<ul><li>a</li><li><strong>b</strong></li></ul>`);
});

test("a 2 000-token reply streams in linear time", () => {
  const parts = [];
  while (parts.join(" ").split(/\s+/).length < 2000) parts.push(DOC);
  const src = words(parts.join("\n\n")).slice(0, 2000).join("");
  const toks = words(src);
  const t0 = performance.now();
  const r = new Element("div");
  const s = markdown.stream(r);
  for (const t of toks) { s.push(t); s.flush(); }
  const ms = performance.now() - t0;
  assert.equal(r.children.map(serialize).join(""), render(src));
  console.log(`# node: ${toks.length} tokens streamed through the renderer in ${ms.toFixed(1)} ms ` +
    `(${(ms / toks.length * 1000).toFixed(0)} µs a token)`);
  assert.ok(ms < 5000, `${ms} ms`);
});
