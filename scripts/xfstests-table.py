#!/usr/bin/env python3
"""The xfstests record and its table in docs/conformance.md (scripts/xfstests calls this).

usage:
  xfstests-table.py group SOURCE GROUP
      print GROUP's tests (e.g. generic/quick) in check's order, from an xfstests source
      tarball or checkout, read the way xfstests' tools/mkgroupfile builds group.list (each
      test's `_begin_fstest` line) and ordered as check orders them (`sort -n`)
  xfstests-table.py table RESULTS_DIR GROUP EXPECTED_FAILURES CI_TESTS CONFORMANCE_MD
      write GROUP's table from every chunk recorded in RESULTS_DIR and its siblings
  xfstests-table.py recorded RESULTS_DIR
      print the group's tests recorded for both daemons (by any group's chunk)

RESULTS_DIR (tests/xfstests/results/generic-quick/) holds `group.txt` (the group's tests, in
order) and one file per chunk and daemon, `<chunk>.<daemon>.txt`: `# key value` header lines
and one line per test (`pass NAME SECONDS`, `notrun NAME WHY`, `fail NAME WHAT`). Chunk names
begin with the UTC date and time the chunk started, so name order is run order: a later
chunk's result for a test replaces an earlier one. A group's record also takes the results of
its tests from its siblings' chunks (generic/auto shares 631 tests with generic/quick, run once).
"""
import pathlib
import re
import sys
import tarfile
from collections import defaultdict

DAEMONS = ("vufsd", "virtiofsd")


def test_number(t):
    m = re.match(r"\d+", t.split("/", 1)[1])
    return int(m.group()) if m else 0


def group_tests(src, group):
    """GROUP's tests in SRC (a tarball or a checkout), in check's order."""
    d, name = group.split("/", 1)
    valid = re.compile(r"[0-9]{3}-?[A-Za-z0-9-]*")
    found = []

    def consider(fname, text):
        if not valid.fullmatch(fname):
            return
        for line in text.splitlines():
            if line.startswith("_begin_fstest"):
                if name == "all" or name in line.split()[1:]:
                    found.append(f"{d}/{fname}")
                return

    src = pathlib.Path(src)
    if src.is_dir():
        for p in (src / "tests" / d).iterdir():
            if p.is_file():
                consider(p.name, p.read_text(errors="replace"))
    else:
        with tarfile.open(src) as tf:
            for m in tf:
                parts = m.name.split("/")
                if m.isfile() and len(parts) >= 3 and parts[-3:-1] == ["tests", d]:
                    consider(parts[-1], tf.extractfile(m).read().decode(errors="replace"))
    return sorted(found, key=lambda t: (test_number(t), t))


def load_chunk(path):
    c = {"file": path.name, "meta": {}, "tests": {}, "partial": False}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].strip().partition(" ")
            if key == "partial":
                c["partial"] = True
            elif key:
                c["meta"].setdefault(key, value.strip())
            continue
        if not line.strip():
            continue
        kind, _, rest = line.partition(" ")
        name, _, detail = rest.partition(" ")
        c["tests"][name] = (kind, detail.strip())
    return c


def load_chunks(results_dir, in_group):
    """Every chunk that ran a test of the group: those recorded for this group and for its
    siblings (generic-quick beside generic-auto): a test's outcome is the test's, whichever
    group's run it came from. Chunk names sort in run order."""
    chunks = defaultdict(dict)  # chunk name -> daemon -> chunk
    prefix = results_dir.name.split("-", 1)[0] + "-"
    for d in sorted(results_dir.parent.glob(prefix + "*")):
        for p in sorted(d.glob("*.txt")):
            m = re.fullmatch(r"(.+)\.(" + "|".join(DAEMONS) + r")\.txt", p.name)
            if not m:
                continue
            c = load_chunk(p)
            if d != results_dir and not in_group.intersection(c["tests"]):
                continue
            if d != results_dir:
                c["tests"] = {t: o for t, o in c["tests"].items() if t in in_group}
                c["meta"]["selection"] = f"{d.name}: " + c["meta"].get("selection", "–")
            chunks[m.group(1)][m.group(2)] = c
    return chunks


def recorded(results_dir):
    """The group's tests recorded for both daemons, in check's order."""
    results_dir = pathlib.Path(results_dir)
    order = [l.strip() for l in (results_dir / "group.txt").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    seen = {d: set() for d in DAEMONS}
    for cs in load_chunks(results_dir, set(order)).values():
        for d, c in cs.items():
            seen[d].update(c["tests"])
    return [t for t in order if all(t in seen[d] for d in DAEMONS)]


def expected(path):
    e = {}
    for line in pathlib.Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test, daemons, outcome, reason = line.split(None, 3)
        e[test] = (daemons.split(","), outcome, reason)
    return e


def fmt_time(s):
    if s is None:
        return "–"
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def table(results_dir, group, expected_path, ci_path, doc):
    results_dir = pathlib.Path(results_dir)
    order = [l.strip() for l in (results_dir / "group.txt").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    in_group = set(order)
    source = next((l[1:].strip() for l in (results_dir / "group.txt").read_text().splitlines()
                   if l.startswith("#")), "")
    chunks = load_chunks(results_dir, in_group)
    # The record: per daemon, per test, the latest chunk's outcome.
    rec = {d: {} for d in DAEMONS}
    for name in sorted(chunks):
        for d, c in chunks[name].items():
            for t, o in c["tests"].items():
                rec[d][t] = (*o, name)
    outside = sorted({t for d in DAEMONS for t in rec[d] if t not in in_group})
    for d in DAEMONS:
        rec[d] = {t: o for t, o in rec[d].items() if t in in_group}
    exp = expected(expected_path)

    n = len(order)
    both = [t for t in order if t in rec["vufsd"] and t in rec["virtiofsd"]]
    prefix = 0
    while prefix < n and order[prefix] in rec["vufsd"] and order[prefix] in rec["virtiofsd"]:
        prefix += 1
    lines = [
        f"#### `{group}`",
        "",
        f"Generated by `scripts/xfstests` from the chunks recorded in `{results_dir}/` "
        f"(one file per chunk and daemon): `{group}`, {n} tests"
        + (f" ({source})" if source else "") + ". Each daemon with `--xattr --posix-acl` (plus "
        "the harness's `--sandbox none --seccomp kill`), one daemon per share (an 8 GiB ext4 "
        "image each), guest QEMU TCG, 2 vCPUs, 2 GiB.",
        "",
        f"**Coverage: {len(both)} of the group's {n} tests are recorded for both daemons**"
        + "".join(f"; {len(rec[d])} for {d}" for d in DAEMONS if len(rec[d]) != len(both))
        + (f": the group's first {prefix} in check's order (`{order[0]}` to "
           f"`{order[prefix - 1]}`)" if prefix else "")
        + (f", plus {len(both) - prefix} later ones rerun on their own" if len(both) > prefix else "")
        + ("." if prefix == n else
           f". Not yet run: {n - len(both)} tests; the next chunk is "
           f"`scripts/xfstests --group {group}"
           + (" --unrecorded" if len(both) > prefix else "")
           + f" --from {order[prefix]} --budget MINUTES`."),
        "",
        "| daemon | passed | failed | not run | recorded |",
        "|---|---|---|---|---|",
    ]
    for d in DAEMONS:
        c = defaultdict(int)
        for kind, _, _ in rec[d].values():
            c[kind] += 1
        lines.append(f"| {d} | {c['pass']} | {c['fail']} | {c['notrun']} | {len(rec[d])} of {n} |")

    lines += ["", "The chunks, oldest first (a later chunk's result for a test replaces an "
              "earlier one):", "",
              "| chunk (UTC) | what ran | vufsd commit | per-test bound | vufsd | virtiofsd |",
              "|---|---|---|---|---|---|"]
    notes = []
    for name in sorted(chunks):
        cs = chunks[name]
        any_c = cs.get("vufsd") or next(iter(cs.values()))
        meta = any_c["meta"]

        def cell(d):
            c = cs.get(d)
            if c is None:
                return "not run"
            el = c["meta"].get("elapsed")
            s = f"{len(c['tests'])} tests, {fmt_time(int(el)) if el else '–'}"
            return s + (" (stopped by the budget)" if c["partial"] else "")

        commit = (cs.get("vufsd") or any_c)["meta"].get("commit", "not recorded")
        bound = meta.get("test-timeout")
        lines.append(f"| {name} | {meta.get('selection', '–')} | {commit} | "
                     f"{bound + ' s' if bound else '–'} | {cell('vufsd')} | {cell('virtiofsd')} |")
        for note in dict.fromkeys(c["meta"]["note"] for c in cs.values() if c["meta"].get("note")):
            ds = [d for d, c in cs.items() if c["meta"].get("note") == note]
            notes.append(f"{name}{'' if len(ds) == len(cs) else ', ' + ', '.join(ds)}: {note}.")
        for d, c in cs.items():
            if c["meta"].get("enosys"):
                notes.append(f"{name}: {d} answered these FUSE opcodes ENOSYS: "
                             f"{c['meta']['enosys']}.")
    notes = list(dict.fromkeys(notes))
    if notes:
        lines += [""] + [f"- {x}" for x in notes]
    if outside:
        lines += ["", f"Also recorded, not in `{group}` and left out above: "
                  + ", ".join(f"`{t}`" for t in outside) + "."]

    def outcome(d, t):
        kind = rec[d].get(t, ("–",))[0]
        return {"pass": "pass", "fail": "**fail**", "notrun": "not run"}.get(kind, kind)

    rows = []
    for t in order:
        outs = {d: outcome(d, t) for d in DAEMONS}
        failed = any(o == "**fail**" for o in outs.values())
        differs = len(set(o for o in outs.values() if o != "–")) > 1
        if not (failed or differs):
            continue
        reason = exp[t][2] if t in exp else "**unexplained**: not in tests/xfstests/expected-failures.txt"
        if not failed and t not in exp:
            # pass vs not run: the not-run reason says why.
            why = [rec[d][t][1] for d in DAEMONS if rec[d].get(t, ("",))[0] == "notrun"]
            reason = f"not run: {why[0]}" if why else reason
        when = ", ".join(sorted({rec[d][t][2] for d in DAEMONS if t in rec[d]}))
        rows.append(f"| `{t}` | {outs['vufsd']} | {outs['virtiofsd']} | {when} | {reason} |")
    lines += ["", "Every recorded test that failed for either daemon, or whose outcome differs "
              "between them:", ""]
    if rows:
        lines += ["| test | vufsd | virtiofsd | chunk | reason |", "|---|---|---|---|---|", *rows]
    else:
        lines.append("None.")

    # Not run, grouped by reason (the same for both daemons unless the table above says otherwise).
    by_reason = defaultdict(list)
    ref = rec["vufsd"] or rec["virtiofsd"]
    for t in order:
        kind, detail, _ = ref.get(t, ("", "", ""))
        if kind == "notrun":
            by_reason[re.sub(r"\s+", " ", detail) or "(no reason given)"].append(t)
    if by_reason:
        lines += ["", "<details><summary>Not run, by the reason xfstests gives "
                  f"({sum(len(v) for v in by_reason.values())} tests)</summary>", "",
                  "| reason | tests |", "|---|---|"]
        for why, ts in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            why = why.replace("|", "\\|")
            lines.append(f"| {why} | {len(ts)}: {', '.join(t.split('/', 1)[1] for t in ts)} |")
        lines += ["", "</details>"]

    # Keep the expected-failure list honest: say where the record contradicts it.
    for t, (daemons, outcome_, _) in sorted(exp.items()):
        for d in daemons:
            if outcome_ == "fail" and rec.get(d, {}).get(t, ("",))[0] == "pass":
                print(f"xfstests-table: {t} is listed as an expected failure for {d}, but its "
                      f"latest record ({rec[d][t][2]}) is a pass", file=sys.stderr)

    label = group.replace("/", "-")
    text = pathlib.Path(doc).read_text()
    begin, end = f"<!-- BEGIN xfstests {label} -->\n", f"\n<!-- END xfstests {label} -->"
    block = begin + "\n".join(lines) + end
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda m: block, text, flags=re.S)
    else:
        marker = "<!-- xfstests tables -->"
        if marker not in text:
            sys.exit(f"{doc}: no `{marker}` line to put the table after")
        last = text.rfind("<!-- END xfstests ")
        if last >= 0:  # after the tables already there
            at = text.index("-->", last) + 3
            text = text[:at] + "\n\n" + block + text[at:]
        else:
            text = text.replace(marker, marker + "\n\n" + block, 1)
    pathlib.Path(doc).write_text(text)
    print(f"updated {doc} ({group}: {len(both)} of {n} tests recorded for both daemons)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "group":
        print("\n".join(group_tests(sys.argv[2], sys.argv[3])))
    elif len(sys.argv) == 3 and sys.argv[1] == "recorded":
        print("\n".join(recorded(sys.argv[2])))
    elif len(sys.argv) == 7 and sys.argv[1] == "table":
        table(*sys.argv[2:7])
    else:
        sys.exit(__doc__)
