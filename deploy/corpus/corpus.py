#!/usr/bin/env python3
"""Spanish corpus tool for tb (deploy time only; Python standard library).

Turns Spanish man pages and HTML manuals from Debian packages into RedPajama-V2-shaped
shards (gzip JSONL: raw_content, doc_id, meta) plus a JSONL.zst variant (field `text`).

Subcommands:
  fixture OUTDIR            small fixture from manpages-es (one shard, ~300 KB)
  build OUTDIR CACHEDIR SOURCE=ROOT...
                            full corpus (see build.sh). ROOT "/" lists an installed
                            package's files with dpkg-query -L; another ROOT is a tree
                            unpacked with dpkg-deb -x. Taken: man pages under
                            /usr/share/man/es/ and HTML under an /es/ directory or named
                            *.es.html (LilyPond's *-big-page duplicates left out).
                            Rendered text is cached per source in CACHEDIR/extract/.
  extract-text OUT FILE...  writes the documents of shards (.jsonl.gz/.jsonl.zst/.jsonl) as
                            one line per non-empty document line (tokenizer training input)

Determinism: file lists are sorted, gzip headers carry no name and mtime 0, JSON is
written with fixed key order, zstd runs single-threaded at a fixed level, and every
subprocess runs with a fixed locale and width. Same inputs give the same bytes.

Text cleaning (applied per source, in this order):
  1. rendering: man pages via `man -E UTF-8 -l` at MANWIDTH=10000 with hyphenation off
     (-rHY=0) and left adjustment (-dAD=l); backspace overstrikes stripped; the header and
     footer lines dropped. HTML via `lynx -dump -nolist -width=10000` (UTF-8 in and out;
     html2text 1.3.2a turns link spaces into underscores, lynx does not); lines without
     a letter or digit (rules) and lynx's REFRESH / <link> lines dropped.
  2. whitespace: lines stripped, runs of blank lines collapsed to one.
  3. boilerplate: a line (exact, after stripping) found in at least max(10, 5%) of the
     source's files is dropped everywhere in that source (navigation, footers, the
     translators' credits of every man page, section titles repeated in every page).
  4. language: paragraphs (blocks between blank lines) are split into words; a paragraph
     with at least 2 English stopword hits and more English than Spanish stopword hits
     (lists below, minus words common to both languages) is dropped as non-Spanish.
     Paragraphs without any stopword (option lists, code) are kept.
  5. short: documents of 10 characters or fewer are dropped (the reference's rule), and so
     are documents with fewer than 5 Spanish stopword hits (nothing Spanish left).
  6. duplicates: exact duplicate documents (sha256 of the text) keep the first by doc_id.
"""
import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys

ES_STOP = set("""
de la que el en y los del se las por un para con una su al lo como más pero sus le ya
este sí porque esta entre cuando muy sin sobre también hasta hay donde quien desde todo
nos durante todos uno les ni contra otros ese eso ante ellos esto mí antes algunos qué
unos yo otro otras otra él tanto esa estos mucho quienes nada muchos cual poco ella estar
estas algunas algo nosotros es son está puede ser cada debe pueden están será tiene
hace usar archivo archivos utiliza puede opción opciones mediante según
""".split())
EN_STOP = set("""
the of and to in is that for it as with was on be by this are or not from at which an but
have has can if will you your all one their there been would more when use used may these
also such only other into its than then them they we do does what should must following
""".split())
_COMMON = ES_STOP & EN_STOP
ES_STOP -= _COMMON
EN_STOP -= _COMMON
WORD_RE = re.compile(r"[a-záéíóúüñ]+")

MAN_ENV_EXTRA = {"MANWIDTH": "10000", "MANROFFOPT": "-rHY=0 -dAD=l", "LC_ALL": "C.UTF-8",
                 "MANPAGER": "cat", "PAGER": "cat"}


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAN_KEEP_FORMATTING", "GROFF_SGR", "MANOPT", "LANG", "LANGUAGE")}
    env.update(MAN_ENV_EXTRA)
    return env


def normalize(text):
    """Strips lines and collapses blank runs; returns text without leading/trailing blanks."""
    out = []
    blank = False
    for line in text.split("\n"):
        line = " ".join(line.split())
        if not line:
            blank = bool(out)
            continue
        if blank:
            out.append("")
            blank = False
        out.append(line)
    return "\n".join(out)


def render_man(path):
    # .so requests resolve against the man tree root (.../man/es), not the caller's cwd.
    m = re.match(r"(.*/man/[^/]+)/man[^/]+/[^/]+$", path)
    r = subprocess.run(["man", "-E", "UTF-8", "-l", path], env=_env(), capture_output=True,
                       check=False, cwd=m.group(1) if m else None)
    if r.returncode != 0:
        return None, "man exit %d: %s" % (r.returncode, r.stderr.decode("utf-8", "replace")[:200])
    text = r.stdout.decode("utf-8", "replace")
    text = re.sub(r".\x08", "", text).replace("\x08", "")
    lines = [l for l in text.split("\n")]
    # Drop the header (first non-empty line) and footer (last non-empty line).
    idx = [i for i, l in enumerate(lines) if l.strip()]
    if len(idx) >= 2:
        del lines[idx[-1]]
        del lines[idx[0]]
    return normalize("\n".join(lines)), None


def render_html(path):
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            data = f.read()
    else:
        with open(path, "rb") as f:
            data = f.read()
    r = subprocess.run(["lynx", "-dump", "-stdin", "-force_html", "-nolist", "-nomargins",
                        "-noreferer", "-display_charset=utf-8", "-assume_charset=utf-8",
                        "-width=10000", "-cfg=/dev/null"],
                       input=data, env=_env(), capture_output=True, check=False)
    if r.returncode != 0:
        return None, "lynx exit %d" % r.returncode
    text = r.stdout.decode("utf-8", "replace")
    text = re.sub(r".\x08", "", text).replace("\x08", "")
    return normalize(text), None


def render(path):
    base = path[:-3] if path.endswith(".gz") else path
    if re.search(r"\.html?$", base):
        return render_html(path)
    return render_man(path)


def render_all(paths, jobs):
    """Renders files in parallel; result order follows `paths`."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
        return list(ex.map(render, paths))


def stop_counts(text):
    es = en = 0
    for w in WORD_RE.findall(text.lower()):
        if w in ES_STOP:
            es += 1
        elif w in EN_STOP:
            en += 1
    return es, en


def drop_non_spanish(text, stats):
    keep = []
    for para in text.split("\n\n"):
        es, en = stop_counts(para)
        if en >= 2 and en > es:
            stats["non_spanish_paragraphs"] = stats.get("non_spanish_paragraphs", 0) + 1
            stats["non_spanish_bytes"] = stats.get("non_spanish_bytes", 0) + len(para.encode())
            continue
        keep.append(para)
    return "\n\n".join(keep)


def drop_boilerplate(texts, stats):
    """texts: list of str (one per file of a source). Returns the cleaned list."""
    counts = {}
    for t in texts:
        for line in set(t.split("\n")):
            if line:
                counts[line] = counts.get(line, 0) + 1
    limit = max(10, (len(texts) * 5 + 99) // 100)
    bad = {l for l, c in counts.items() if c >= limit}
    out = []
    for t in texts:
        kept = []
        for line in t.split("\n"):
            if line in bad:
                stats["boilerplate_lines"] = stats.get("boilerplate_lines", 0) + 1
                continue
            kept.append(line)
        out.append(normalize("\n".join(kept)))
    return out


def doc_json(text, source, path):
    return json.dumps({"raw_content": text, "doc_id": source + ":" + path,
                       "meta": {"source": source, "path": path}},
                      ensure_ascii=False, separators=(",", ":"))


def write_gzip(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6,
                           mtime=0) as g:
            for l in lines:
                g.write(l.encode("utf-8") + b"\n")
    os.replace(tmp, path)


def write_zst(path, lines):
    tmp = path + ".tmp"
    data = b"".join(l.encode("utf-8") + b"\n" for l in lines)
    with open(tmp, "wb") as f:
        subprocess.run(["zstd", "-q", "-T1", "-10", "-c"], input=data, stdout=f, check=True)
    os.replace(tmp, path)


def write_shard(prefix, docs):
    """docs: list of (doc_id, source, path, text). Writes prefix.jsonl.gz and .jsonl.zst."""
    rp = [doc_json(t, s, p) for (_, s, p, t) in docs]
    txt = [json.dumps({"text": t, "doc_id": d, "meta": {"source": s, "path": p}},
                      ensure_ascii=False, separators=(",", ":")) for (d, s, p, t) in docs]
    write_gzip(prefix + ".jsonl.gz", rp)
    write_zst(prefix + ".jsonl.zst", txt)


def clean_docs(source, paths, rendered, stats):
    """Boilerplate, language and length filters for one source. Returns [(id, src, path, text)]."""
    ok = []
    for p, (t, e) in zip(paths, rendered):
        if t is None:
            stats["render_errors"] = stats.get("render_errors", 0) + 1
            sys.stderr.write("corpus: %s: %s: %s\n" % (source, p, e))
            continue
        ok.append((p, t))
    texts = drop_boilerplate([t for _, t in ok], stats)
    docs = []
    for (p, _), t in zip(ok, texts):
        t = normalize(drop_non_spanish(t, stats))
        es, _ = stop_counts(t)
        if len(t.strip()) <= 10 or es < 5:
            stats["short_or_empty_documents"] = stats.get("short_or_empty_documents", 0) + 1
            continue
        docs.append((source + ":" + p, source, p, t))
    return docs


def dedup(docs, stats):
    seen = set()
    out = []
    for d in sorted(docs, key=lambda d: d[0]):
        h = hashlib.sha256(d[3].encode("utf-8")).digest()
        if h in seen:
            stats["duplicate_documents"] = stats.get("duplicate_documents", 0) + 1
            continue
        seen.add(h)
        out.append(d)
    return out


def dpkg_files(pkg):
    r = subprocess.run(["dpkg-query", "-L", pkg], capture_output=True, check=True,
                       env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    return sorted(l for l in r.stdout.decode().split("\n") if l and os.path.isfile(l))


def cmd_fixture(outdir, target_bytes=300000):
    paths = [p for p in dpkg_files("manpages-es")
             if p.startswith("/usr/share/man/es/") and p.endswith(".gz")]
    if not paths:
        sys.exit("corpus: manpages-es has no pages under /usr/share/man/es")
    docs = []
    total = 0
    stats = {}
    # Render in sorted batches until enough text; only the files rendered count.
    i = 0
    chosen = []
    while i < len(paths) and total < target_bytes:
        batch = paths[i:i + 16]
        i += len(batch)
        for p, (t, e) in zip(batch, render_all(batch, 2)):
            if t is None:
                sys.exit("corpus: %s: %s" % (p, e))
            if len(t.encode()) > 24000:  # many small documents rather than bash(1)
                continue
            chosen.append((p, t))
            total += len(t.encode())
    # No boilerplate pass on the fixture (too few files for the rule); language filter only.
    for p, t in chosen:
        t = normalize(drop_non_spanish(t, stats))
        if len(t) > 10:
            docs.append(("manpages-es:" + p, "manpages-es", p, t))
    docs = dedup(docs, stats)
    os.makedirs(outdir, exist_ok=True)
    write_shard(os.path.join(outdir, "fixture-00000"), docs)
    nbytes = sum(len(d[3].encode()) for d in docs)
    with open(os.path.join(outdir, "fixture-stats.json"), "w") as f:
        json.dump({"documents": len(docs), "bytes": nbytes, "dropped": stats}, f,
                  sort_keys=True, indent=1)
        f.write("\n")
    print("corpus: fixture: %d documents, %d bytes" % (len(docs), nbytes))


def read_shard_docs(path):
    """Yields document texts of a shard (.jsonl.gz: raw_content; .zst/.jsonl: text)."""
    if path.endswith(".zst"):
        p = subprocess.Popen(["zstd", "-q", "-d", "-c", path], stdout=subprocess.PIPE)
        stream = io.TextIOWrapper(p.stdout, encoding="utf-8")
    elif path.endswith(".gz"):
        p = None
        stream = io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    else:
        p = None
        stream = open(path, encoding="utf-8")
    for line in stream:
        if not line.strip():
            continue
        o = json.loads(line)
        yield o["raw_content"] if "raw_content" in o else o["text"]
    stream.close()
    if p is not None and p.wait() != 0:
        sys.exit("corpus: zstd failed on %s" % path)


def cmd_extract_text(out, files):
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for path in files:
            for text in read_shard_docs(path):
                for line in text.split("\n"):
                    if line.strip():
                        f.write(line + "\n")
                        n += 1
    print("corpus: %d lines to %s" % (n, out), file=sys.stderr)


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    if argv[1] == "fixture" and len(argv) == 3:
        cmd_fixture(argv[2])
    elif argv[1] == "extract-text" and len(argv) >= 4:
        cmd_extract_text(argv[2], argv[3:])
    elif argv[1] == "build" and len(argv) >= 5:
        cmd_build(argv[2], argv[3], argv[4:])
    else:
        sys.exit(__doc__)


def select_files(source, root):
    """Sorted (package path, file on disk) pairs of the Spanish text files of a source."""
    if root == "/":
        listed = subprocess.run(["dpkg-query", "-L", source], capture_output=True, check=True,
                                env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
                                ).stdout.decode().split("\n")
        pairs = [(p, p) for p in listed if p]
    else:
        pairs = []
        for d, dirs, files in os.walk(root):
            dirs.sort()
            for f in files:
                full = os.path.join(d, f)
                pairs.append(("/" + os.path.relpath(full, root), full))
    out = []
    for pkgpath, disk in sorted(pairs):
        if os.path.islink(disk) or not os.path.isfile(disk):
            continue  # symlinked pages duplicate their targets
        if pkgpath.startswith("/usr/share/man/es/") and re.search(r"\.\d\w*\.gz$", pkgpath):
            out.append((pkgpath, disk))
        elif re.search(r"\.html?(\.gz)?$", pkgpath) and "-big-page" not in pkgpath:
            if ("/es/" in pkgpath or ".es.htm" in pkgpath):
                out.append((pkgpath, disk))
    return out


def source_key(source, root, files):
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    h.update(source.encode() + b"\0" + root.encode() + b"\0")
    for pkgpath, disk in files:
        st = os.stat(disk)
        h.update(("%s\0%d\0%d\n" % (pkgpath, st.st_size, int(st.st_mtime))).encode())
    return h.hexdigest()


def extract_source(source, root, cachedir, stats):
    """Rendered texts [(pkgpath, text or None, error)] of a source, cached by input key."""
    files = select_files(source, root)
    key = source_key(source, root, files)
    cache = os.path.join(cachedir, "extract", source + ".jsonl.gz")
    if os.path.exists(cache):
        with gzip.open(cache, "rt", encoding="utf-8") as f:
            head = json.loads(f.readline())
            if head.get("key") == key:
                rows = [json.loads(l) for l in f]
                stats["cached"] = True
                return [(r["path"], r["text"], r.get("error")) for r in rows]
    rendered = render_all([d for _, d in files], os.cpu_count() or 2)
    rows = [(p, t, e) for (p, _), (t, e) in zip(files, rendered)]
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    lines = [json.dumps({"key": key})]
    lines += [json.dumps({"path": p, "text": t, "error": e}, ensure_ascii=False)
              for p, t, e in rows]
    write_gzip(cache, lines)
    stats["cached"] = False
    return rows


RULE_RE = re.compile(r"^[\W_]*$")


def strip_render_noise(text, stats):
    """Lines without any letter or digit (rules, bullets) and lynx's REFRESH/link lines."""
    kept = []
    for i, line in enumerate(text.split("\n")):
        if line and (RULE_RE.match(line) or line.startswith("REFRESH(") or
                     (i == 0 and line.startswith("#"))):
            stats["noise_lines"] = stats.get("noise_lines", 0) + 1
            continue
        kept.append(line)
    return normalize("\n".join(kept))


def split_shards(docs, n):
    """Documents in sha256(doc_id) order (mixes sources), cut into n runs of similar bytes."""
    docs = sorted(docs, key=lambda d: hashlib.sha256(d[0].encode()).digest())
    total = sum(len(d[3].encode()) for d in docs)
    shards = [[] for _ in range(n)]
    acc = 0
    for d in docs:
        k = min(n - 1, acc * n // max(total, 1))
        shards[k].append(d)
        acc += len(d[3].encode())
    return shards


def cmd_build(outdir, cachedir, specs, nshards=8):
    sources = sorted(tuple(s.split("=", 1)) for s in specs)
    stats = {"sources": {}, "dropped": {}}
    all_docs = []
    for source, root in sources:
        st = {}
        rows = extract_source(source, root, cachedir, st)
        paths = [p for p, _, _ in rows]
        rendered = [(None if t is None else strip_render_noise(t, st), e) for _, t, e in rows]
        docs = clean_docs(source, paths, rendered, st)
        st["files"] = len(rows)
        all_docs += docs
        stats["sources"][source] = st
        print("corpus: %s: %d files, %d documents kept%s" % (
            source, len(rows), len(docs), " (cached text)" if st.get("cached") else ""),
            file=sys.stderr)
    dd = {}
    docs = dedup(all_docs, dd)
    for d in docs:
        st = stats["sources"][d[1]]
        st["documents"] = st.get("documents", 0) + 1
        st["bytes"] = st.get("bytes", 0) + len(d[3].encode())
    for source, st in stats["sources"].items():
        st.pop("cached", None)
        for k, v in st.items():
            if k not in ("files", "documents", "bytes"):
                stats["dropped"][k] = stats["dropped"].get(k, 0) + v
    stats["dropped"]["duplicate_documents"] = dd.get("duplicate_documents", 0)
    stats["documents"] = len(docs)
    stats["bytes"] = sum(len(d[3].encode()) for d in docs)
    os.makedirs(outdir, exist_ok=True)
    shard_stats = []
    for i, sh in enumerate(split_shards(docs, nshards)):
        name = "shard-%05d" % i
        write_shard(os.path.join(outdir, name), sh)
        shard_stats.append({"name": name, "documents": len(sh),
                            "bytes": sum(len(d[3].encode()) for d in sh)})
    stats["shards"] = shard_stats
    with open(os.path.join(outdir, "stats.json.tmp"), "w") as f:
        json.dump(stats, f, sort_keys=True, indent=1)
        f.write("\n")
    os.replace(os.path.join(outdir, "stats.json.tmp"), os.path.join(outdir, "stats.json"))
    with open(os.path.join(outdir, "stats.txt"), "w") as f:
        f.write("documents %d\nbytes %d\n" % (stats["documents"], stats["bytes"]))
        f.write("%-24s %7s %7s %10s\n" % ("source", "files", "docs", "bytes"))
        for source, st in sorted(stats["sources"].items()):
            f.write("%-24s %7d %7d %10d\n" % (source, st["files"], st.get("documents", 0),
                                              st.get("bytes", 0)))
        f.write("dropped:\n")
        for k, v in sorted(stats["dropped"].items()):
            f.write("  %-24s %d\n" % (k, v))
        for s in shard_stats:
            f.write("%s %d documents %d bytes\n" % (s["name"], s["documents"], s["bytes"]))
    sys.stderr.write(open(os.path.join(outdir, "stats.txt")).read())


if __name__ == "__main__":
    main(sys.argv)
