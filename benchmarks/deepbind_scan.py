"""Genome-scan speed: biocnn's DeepBind scan vs memelite's FIMO, and memory vs genome length.

A generated 10 Mbp FASTA is scanned with a default-sized DeepBind model (16 motifs x 24 bp,
both strands, window 101, stride 50) and, in the same run, with memelite's FIMO using 16
PWMs of width 24 (both strands, p < 1e-4). Warm-up runs (first use of the buffers for ours,
numba compilation for FIMO) are excluded; the tools take turns, ``--repeats`` runs each, and
each tool's fastest run counts. The kernel build used (``kernel_isa``: avx512, avx2 or
baseline, picked from the CPU) is printed with the table. Also printed: the share of this machine's
measured fp32 matmul FLOP/s that the scan reaches, counting the FLOPs of the dense convolution
it replaces (``roofline_share``; above 1 because table look-ups skip most of them) and the
additions it actually performs (``roofline_share_actual``), and the peak RSS of a fresh scan
process on 10 and 50 Mbp genomes (flat = memory independent of genome length).

    python benchmarks/deepbind_scan.py --out scan.json

``--zoo DIR`` measures instead the many-model scan: every model of ``DIR`` (a folder of model
directories such as ``biocnn deepbind import``'s ``--out``, or the release's ``db`` folder, then
imported first) over one generated ``--mbp`` FASTA in one pass, in model x Mbp per second, next
to the one-model scan of the same FASTA with the default-sized model.

    python benchmarks/deepbind_scan.py --zoo ../shared/data/deepbind/db --mbp 1 --out zoo.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (CPU time then measures work on a busy machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from child_memory import peak_rss_gb

from biocnn.deepbind.model import DeepBind
from biocnn.deepbind.scan import scan_fasta
from biocnn.io.atomic import write_json


def write_genome(path: Path, bp: int, seed: int, chromosomes: int = 2) -> None:
    """A random FASTA of ``bp`` bases in a few chromosomes, 60 bases per line."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", np.uint8)
    per = bp // chromosomes
    with open(path, "wb") as fh:
        for c in range(chromosomes):
            fh.write(f">chr{c + 1}\n".encode())
            seq = letters[rng.integers(0, 4, per)]
            pad = (-per) % 60
            block = np.concatenate([seq, np.zeros(pad, np.uint8)]).reshape(-1, 60)
            lines = np.concatenate([block, np.full((len(block), 1), ord("\n"), np.uint8)], axis=1).tobytes()
            fh.write(lines.replace(b"\x00", b""))


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 matmul FLOP/s of this machine (torch, all threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def actual_adds_per_bp(net: DeepBind, window: int, stride: int) -> float:
    """Float additions per bp of the C kernel: each inner detector position once
    (ceil(k / 4) 4-mer table rows; min(stride, window - k + 1) positions per window), plus per
    window 2 x sum_{c=1}^{k-1} ceil(c / 4) rows for the detectors overlapping the padding; a row
    adds one value per channel (2 x motifs)."""
    k = net.motif_len
    rows = min(stride, window - k + 1) * -(-k // 4) + 2 * sum(-(-c // 4) for c in range(1, k))
    return rows * 2 * net.num_motifs / stride


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model(seed: int = 0) -> DeepBind:
    torch.manual_seed(seed)
    return DeepBind(num_motifs=16, motif_len=24, hidden=32).eval()


def peak_rss_mb(fasta: Path, out_prefix: Path) -> float:
    """Peak RSS (MB) of a fresh process that scans ``fasta`` (see :func:`child_memory.peak_rss_gb`)."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); from deepbind_scan import model; "
        "from biocnn.deepbind.scan import scan_fasta; "
        f"scan_fasta(model(), {str(fasta)!r}, {str(out_prefix)!r})"
    )
    return peak_rss_gb(code) * 1024


def zoo_benchmark(args, tmp: Path) -> dict:
    """The many-model scan of one ``--mbp`` FASTA with every model of ``--zoo`` (imported first
    when it is the release's db folder); the one-model scan of the same FASTA alongside."""
    from biocnn.deepbind.scan_zoo import load_models, scan_fasta_models

    zoo = Path(args.zoo)
    if (zoo / "db.tsv").is_file():
        from biocnn.deepbind.zoo import import_models

        result = import_models(zoo, tmp / "zoo")
        if result.failures:
            raise SystemExit(f"{len(result.failures)} models failed to import: {result.failures[:3]}")
        zoo = tmp / "zoo"
    start = time.perf_counter()
    models = load_models([zoo])
    if args.zoo_models:
        models = dict(list(models.items())[: args.zoo_models])
    load_s = time.perf_counter() - start
    genome = tmp / "genome.fa"
    bp = int(args.mbp * 1e6)
    write_genome(genome, bp, args.seed)
    single = scan_fasta(model(args.seed), genome, tmp / "single")  # also warms the file cache
    load_before = os.getloadavg()[0]
    cpu, start = time.process_time(), time.perf_counter()
    stats = scan_fasta_models(models, genome, tmp / "zoo-out", progress_every=60.0)
    total_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    scan_cpu_s = cpu_s - stats["setup_cpu_seconds"]  # the scan alone, without packing the tables
    load = (load_before, os.getloadavg()[0])
    motif_lens = sorted({m.motif_len for m in models.values()})
    work = len(models) * bp / 1e6  # model x Mbp
    result = {
        "models": len(models),
        "genome_mbp": args.mbp,
        "motif_lens": motif_lens,
        "load_s": load_s,
        "scan_s": stats["seconds"],
        "scan_cpu_s": scan_cpu_s,
        "setup_s": stats["setup_seconds"],
        "setup_cpu_s": stats["setup_cpu_seconds"],
        "total_s": total_s,  # scan + packing every model's tables
        "total_cpu_s": cpu_s,
        "model_mbp_per_s": stats["model_mbp_per_s"],
        "model_mbp_per_cpu_s": work / scan_cpu_s,
        "model_mbp_per_s_with_setup": work / total_s,
        "model_mbp_per_cpu_s_with_setup": work / cpu_s,
        "single_model_mbps": single["bp_per_s"] / 1e6,
        "output_gb": sum(f.stat().st_size for f in (tmp / "zoo-out").iterdir()) / 1e9,
        "load_average": load,
        "backend": stats["backend"],
        "kernel_isa": stats.get("kernel_isa"),
        "threads": torch.get_num_threads(),
    }
    print(f"{'scan':<48} {'models':>6} {'Mbp':>5} {'s':>7} {'model x Mbp/s':>14} {'per CPU-s':>10}")
    rows = [
        ("biocnn deepbind scan, every model of the zoo", len(models), stats["seconds"], work / scan_cpu_s),
        ("  the same, counting the packing of the models", len(models), total_s, work / cpu_s),
    ]
    for label, n, seconds, per_cpu in rows:
        print(f"{label:<48} {n:>6} {args.mbp:>5g} {seconds:>7.1f} {n * bp / 1e6 / seconds:>14.1f} {per_cpu:>10.1f}")
    print(
        f"{'biocnn deepbind scan, one model (16 x 24)':<48} {1:>6} {args.mbp:>5g} {single['seconds']:>7.1f} "
        f"{result['single_model_mbps']:>14.1f}"
    )
    print(
        f"load average {load[0]:.1f} before, {load[1]:.1f} after (2 cores: above 2, other jobs share them and "
        f"the per-CPU-second column is the one to compare); packing {stats['setup_seconds']:.1f} s "
        f"({stats['setup_cpu_seconds']:.1f} CPU-s)"
    )
    print(
        f"motif lengths {motif_lens}; models loaded in {load_s:.1f} s; {result['output_gb']:.2f} GB written; "
        f"backend {stats['backend']}, kernel build {stats.get('kernel_isa')}, {result['threads']} threads"
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mbp", type=float, default=10.0, help="genome size for the speed comparison")
    parser.add_argument("--large-mbp", type=float, default=50.0, help="second genome size for the memory check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per tool, taking turns; the fastest counts")
    parser.add_argument("--zoo", help="measure the many-model scan with every model of this folder (or db folder)")
    parser.add_argument("--zoo-models", type=int, help="only the first N models of --zoo")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.zoo:
        with tempfile.TemporaryDirectory() as tmp:
            write_json(args.out, zoo_benchmark(args, Path(tmp)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small, genome, large = tmp / "warm.fa", tmp / "genome.fa", tmp / "large.fa"
        write_genome(small, 200_000, args.seed + 1)
        write_genome(genome, int(args.mbp * 1e6), args.seed)
        bp = int(args.mbp * 1e6)

        from memelite import fimo

        net = model(args.seed)
        rng = np.random.default_rng(args.seed)
        pwms = {f"motif{i}": rng.dirichlet(np.full(4, 0.5), size=24).T for i in range(16)}  # 16 PWMs, width 24
        warm = scan_fasta(net, small, tmp / "warm")  # warm-ups (FIMO: numba compilation)
        fimo(pwms, str(small), threshold=1e-4)
        # (seconds, CPU seconds) per run; the two tools take turns, so a busy spell on the machine
        # falls on both, and the fastest of --repeats runs counts for each.
        runs = {"ours": [], "fimo": []}
        for _ in range(args.repeats):
            cpu = time.process_time()
            ours = scan_fasta(net, genome, tmp / "ours")
            runs["ours"].append((ours["seconds"], time.process_time() - cpu))
            start, cpu = time.perf_counter(), time.process_time()
            hits = fimo(pwms, str(genome), threshold=1e-4)
            runs["fimo"].append((time.perf_counter() - start, time.process_time() - cpu))
        (ours_s, ours_cpu), (fimo_s, fimo_cpu) = min(runs["ours"]), min(runs["fimo"])
        ours_mbps, fimo_mbps = bp / ours_s / 1e6, bp / fimo_s / 1e6

        peak = matmul_flops()
        flops_per_bp = 2 * 2 * net.num_motifs * 4 * net.motif_len  # multiply-adds, both strands
        roofline = ours_mbps * 1e6 * flops_per_bp / peak
        adds_per_bp = actual_adds_per_bp(net, ours["window"], ours["stride"])

        rss_small = peak_rss_mb(genome, tmp / "rss10")
        write_genome(large, int(args.large_mbp * 1e6), args.seed + 2)
        rss_large = peak_rss_mb(large, tmp / "rss50")

    result = {
        "ours_mbps": ours_mbps,
        "fimo_mbps": fimo_mbps,
        "ratio": ours_mbps / fimo_mbps,
        "roofline_share": roofline,
        "peak_rss_mb_10mbp": rss_small,
        "peak_rss_mb_50mbp": rss_large,
        "matmul_gflops": peak / 1e9,
        "scan_effective_gflops": ours_mbps * 1e6 * flops_per_bp / 1e9,
        "roofline_share_actual": ours_mbps * 1e6 * adds_per_bp / peak,
        "adds_per_bp": adds_per_bp,
        "fimo_hits": int(sum(len(h) for h in hits)),
        "windows": ours["windows"],
        "genome_mbp": args.mbp,
        "backend": warm["backend"],
        "kernel_isa": warm.get("kernel_isa"),
        # Mbp per CPU-second (all threads): comparable when other jobs share the cores.
        "ours_mbp_per_cpu_s": bp / 1e6 / ours_cpu,
        "fimo_mbp_per_cpu_s": bp / 1e6 / fimo_cpu,
    }
    per_cpu = result["ours_mbp_per_cpu_s"], result["fimo_mbp_per_cpu_s"]
    print(f"{'method':<42} {'Mbp/s':>7} {'ratio':>6} {'Mbp/CPU-s':>10} {'ratio':>6}")
    print(
        f"{'biocnn deepbind scan (16 x 24, both strands)':<42} {ours_mbps:>7.2f} {ours_mbps / fimo_mbps:>6.2f} "
        f"{per_cpu[0]:>10.2f} {per_cpu[0] / per_cpu[1]:>6.2f}"
    )
    print(
        f"{'memelite FIMO (16 PWMs x 24, both strands)':<42} {fimo_mbps:>7.2f} {1.0:>6.2f} {per_cpu[1]:>10.2f} "
        f"{1.0:>6.2f}"
    )
    print(
        f"matmul peak {peak / 1e9:.1f} GFLOP/s; scan at {result['scan_effective_gflops']:.1f} dense-equivalent "
        f"GFLOP/s = {roofline:.2f} of it; {adds_per_bp:.0f} additions/bp actually done = "
        f"{result['roofline_share_actual']:.3f} of it"
    )
    print(f"peak RSS: {rss_small:.0f} MB at {args.mbp:.0f} Mbp, {rss_large:.0f} MB at {args.large_mbp:.0f} Mbp")
    print(f"backend {warm['backend']}, kernel build {warm.get('kernel_isa')}")
    write_json(args.out, result)  # atomic, like every biocnn output
    return 0


if __name__ == "__main__":
    sys.exit(main())
