"""Tables and plots of benchmarks/bench_schedules.sh.

    python bench_schedules_report.py LINES OUT_DIR

LINES holds one JSON object per run ("kind": measured | emulated | simulated).
Writes OUT_DIR/schedules.json, schedules.md, schedules_throughput.png and
schedules_timeline.png, and prints the markdown.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def error(row):
    return 100.0 * (row["predicted_step_s"] / row["step_s"] - 1)


def layout(row):
    parts = []
    for dim in ("dp", "pp", "tp"):
        if row.get(dim, 1) > 1:
            parts.append("%s=%d" % (dim, row[dim]))
    if row.get("virtual_stages", 1) > 1:
        parts.append("v=%d" % row["virtual_stages"])
    return " x ".join(parts)


def recompute_of(row):
    return row.get("recompute", "none")


def measured_table(rows):
    out = ["| layout | schedule | recompute | measured ms | predicted ms | error | samples/s |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| %s | %s | %s | %.1f | %.1f | %+.1f%% | %.1f |" % (
            layout(r), r["schedule"], recompute_of(r), 1e3 * r["step_s"], 1e3 * r["predicted_step_s"], error(r),
            r["samples_per_s"]))
    return out


def emulated_table(rows):
    out = ["| p | schedule | recompute | emulated ms | simulated ms | error |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| %d | %s | %s | %.1f | %.1f | %+.1f%% |" % (
            r["pp"], r["schedule"] + (" (v=%d)" % r["virtual_stages"] if r["virtual_stages"] > 1 else ""),
            recompute_of(r), 1e3 * r["step_s"], 1e3 * r["predicted_step_s"], error(r)))
    out.append("")
    out.append("| p | shifted critical path vs 1F1B with full recomputation | emulated | simulated |")
    out.append("|---|---|---|---|")
    for p in sorted({r["pp"] for r in rows}):
        base = [r for r in rows if r["pp"] == p and r["schedule"] == "1f1b" and recompute_of(r) == "full"]
        scp = [r for r in rows if r["pp"] == p and r["schedule"] == "shifted_critical_path"]
        if base and scp:
            out.append("| %d | step time ratio (below 1: faster) | %.3f | %.3f |" % (
                p, scp[0]["step_s"] / base[0]["step_s"], scp[0]["predicted_step_s"] / base[0]["predicted_step_s"]))
    return out


def simulated_table(rows):
    out = []
    for machine in sorted({r["machine"] for r in rows}):
        out.append("")
        out.append("%s, 64 GPUs (8 per node): samples/s, and against 1F1B with full recomputation" % machine)
        out.append("")
        variants = []
        for r in rows:
            v = (r["schedule"], r["recompute"])
            if v not in variants:
                variants.append(v)
        models = []
        for r in rows:
            if r["machine"] == machine and r["model"] not in models:
                models.append(r["model"])
        out.append("| variant | " + " | ".join(models) + " |")
        out.append("|---|" + "---|" * len(models))
        for v in variants:
            cells = []
            for m in models:
                mine = [r for r in rows if r["machine"] == machine and r["model"] == m and
                        (r["schedule"], r["recompute"]) == v]
                base = [r for r in rows if r["machine"] == machine and r["model"] == m and
                        (r["schedule"], r["recompute"]) == ("1f1b", "full")]
                if mine and base:
                    cells.append("%.1f (%.2fx)" % (mine[0]["samples_per_s"],
                                                   mine[0]["samples_per_s"] / base[0]["samples_per_s"]))
                else:
                    cells.append("-")
            out.append("| %s, recompute %s | %s |" % (v[0], v[1], " | ".join(cells)))
        layouts = {}
        for r in rows:
            if r["machine"] == machine:
                layouts[r["model"]] = "dp %d x pp %d x tp %d, m = %d of %d" % (
                    r["dp"], r["pp"], r["tp"], r["microbatches"], r["microbatch_rows"])
        out.append("")
        out.append("Layouts: " + "; ".join("%s %s" % kv for kv in layouts.items()))
    return out


def throughput_plot(rows, path):
    groups = [("pp=2", [r for r in rows if r["dp"] == 1 and r["tp"] == 1]),
              ("dp=2 x pp=2", [r for r in rows if r["dp"] == 2])]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, (title, rs) in zip(axes, groups):
        names = ["%s\n%s" % (r["schedule"].replace("_1f1b", ""), recompute_of(r)) for r in rs]
        xs = range(len(rs))
        ax.bar(xs, [r["samples_per_s"] for r in rs], color="#4c72b0", label="measured")
        ax.plot(xs, [r["global_batch"] / r["predicted_step_s"] for r in rs], "o", color="#dd8452",
                label="simulated")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, fontsize=7)
        ax.set_title("GPT (8 blocks, hidden 128), %s, this host" % title, fontsize=9)
        ax.set_ylabel("samples/s")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def timeline_plot(trace, simulated, path, step):
    colors = {"F": "#4c72b0", "C": "#8172b3", "R": "#c44e52", "B": "#55a868", "T": "#cccccc", "G": "#dd8452",
              "O": "#937860", "S": "#eeeeee"}
    fig, axes = plt.subplots(2, 1, figsize=(13, 5), sharex=True)
    for ax, (title, events) in zip(axes, (("measured (step %d)" % step, trace), ("simulated", simulated))):
        xs = [e for e in events if e.get("ph") == "X"]
        if title.startswith("measured"):
            xs = [e for e in xs if e["args"]["step"] == step]
        if not xs:
            continue
        t0 = min(e["ts"] for e in xs)
        for e in xs:
            ax.barh(e["pid"], e["dur"] / 1e3, left=(e["ts"] - t0) / 1e3, color=colors.get(e["cat"], "black"),
                    edgecolor="white", linewidth=0.3)
        ax.set_ylabel("rank")
        ax.set_yticks(sorted({e["pid"] for e in xs}))
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    axes[-1].set_xlabel("ms (F forward, F* purple, R red, B green, transfers grey, reduce orange)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    lines, out = sys.argv[1], sys.argv[2]
    rows = [json.loads(l) for l in open(lines) if l.strip()]
    measured = [r for r in rows if r.get("kind") == "measured"]
    emulated = [r for r in rows if r.get("kind") == "emulated"]
    simulated = [r for r in rows if r.get("kind") == "simulated"]
    host = json.load(open(os.path.join(out, "host.json")))
    md = ["# Schedule benchmark (benchmarks/bench_schedules.sh)", "",
          "This host: pace of a process while k compute at once %s; Gloo one-way latency %.0f us, %.0f MB/s." % (
              host["shared_speed"], 1e6 * host["intra_node"]["latency_s"], host["intra_node"]["bytes_per_s"] / 1e6),
          "", "Measured here (1 thread per rank), and predicted by the simulator from a profile of the stages:", ""]
    md += measured_table(measured)
    md += ["", "Emulated (compute sleeps for its profiled time, communication real), and simulated:", ""]
    md += emulated_table(emulated)
    md += ["", "Merak's setting, simulated (analytic GPT costs on machine descriptions):"]
    md += simulated_table(simulated)
    text = "\n".join(md) + "\n"
    open(os.path.join(out, "schedules.md"), "w").write(text)
    json.dump({"host": host, "measured": measured, "emulated": emulated, "simulated": simulated},
              open(os.path.join(out, "schedules.json"), "w"), indent=1)
    if measured:
        throughput_plot(measured, os.path.join(out, "schedules_throughput.png"))
        pick = [r for r in measured if r["name"].startswith("dp2-pp2-1f1b-none")] or measured
        trace = os.path.join(out, "traces", pick[0]["name"] + ".json")
        if os.path.exists(trace) and os.path.exists(trace + ".simulated.json"):
            timeline_plot(json.load(open(trace))["traceEvents"],
                          json.load(open(trace + ".simulated.json"))["traceEvents"],
                          os.path.join(out, "schedules_timeline.png"), step=pick[0]["steps"])
    print(text)


if __name__ == "__main__":
    main()
