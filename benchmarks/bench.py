"""Throughput and peak memory of fedml-storage against boto3 baselines, in one run on one moto S3 server.

    python benchmarks/bench.py            # 1 GiB file, 10,000 x 4 KiB files
    python benchmarks/bench.py --quick    # 128 MiB, 2,000 files

moto runs in its own process; every measured operation runs in a fresh child process, so its peak RSS is
its own. Times cover the operation only (imports and set-up excluded). Prints ratios against the baselines
measured in the same run and the project's speed goals (benchmarks/README.md); asserts nothing. Needs the
`test` extra (moto's server): pip install -e ".[test]".
"""

from __future__ import annotations

import argparse
import importlib.util
import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

BUCKET = "bench"
API_KEY = "AKIABENCH:bench-secret"
API_CALLS = 20  # metadata calls timed for the cost of a client per call
PART = 16 * 1024 * 1024
CONCURRENCY = 8
# A project's usual .gitignore (Python's), none of which matches the data here: what the patterns cost a re-upload
GITIGNORE = """__pycache__/\n*.py[cod]\n*$py.class\n*.so\n.Python\nbuild/\ndevelop-eggs/\ndist/\ndownloads/\neggs/\n.eggs/
lib/\nlib64/\nparts/\nsdist/\nvar/\nwheels/\n*.egg-info/\n.installed.cfg\n*.egg\n*.manifest\n*.spec\npip-log.txt
.tox/\n.nox/\n.coverage\n.coverage.*\n.cache\nnosetests.xml\ncoverage.xml\n*.cover\n.hypothesis/\n.pytest_cache/\n*.mo
*.pot\n*.log\nlocal_settings.py\ndb.sqlite3\ninstance/\n.webassets-cache\n.scrapy\ndocs/_build/\ntarget/
.ipynb_checkpoints\n**/checkpoints/**\n!keep.log\n.env\n.venv\nenv/\nvenv/\n"""


def _s3(endpoint: str, when_required: bool = False):
    """A plain boto3 client; `when_required`: the checksum setting S3-compatible endpoints need (as ours uses).

    With it no checksum algorithm is declared, and moto then computes a full-object CRC64NVME inside
    CompleteMultipartUpload, which boto3's defaults (CRC32 per part) avoid: see benchmarks/README.md.
    """
    import boto3
    from botocore.config import Config

    key_id, secret = API_KEY.split(":")
    config = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required") \
        if when_required else None
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret,
                        region_name="us-east-1", config=config)


def _tm_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=CONCURRENCY)


def _client(endpoint: str, **settings):
    from fedml_storage import StorageClient

    return StorageClient(service="S3", bucket=BUCKET, endpoint_url=endpoint, api_key=API_KEY, region="us-east-1",
                         part_size=PART, concurrency=CONCURRENCY, **settings)


def _cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds of this process (all threads), or of process `pid` (Linux /proc; else None)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_op(op: str, endpoint: str, data: Path, scratch: Path, server_pid: int) -> dict:
    """Do one operation; its seconds, and the CPU seconds it cost here and in the server meanwhile."""
    s3 = _s3(endpoint, when_required=op.startswith("tmreq"))
    # fsws: fedml-storage with boto3's default checksums (CRC32 per part), as TransferManager uses them
    client = _client(endpoint, checksum_calculation="when_supported") if op.startswith("fsws") else _client(endpoint)
    big, tree = data / "big.bin", data / "tree"
    out = scratch / op
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if op in ("fs_upload_file", "fsws_upload_file", "fs_upload_dir"):
        client.delete("big.bin" if op.endswith("file") else "tree")  # a first upload, not a skipped one
    if op in ("fs_redownload_file", "fs_redownload_dir"):  # the copy a re-run of the pipeline finds there
        client.download("big.bin" if op.endswith("file") else "tree", out).unwrap()
    client.exists("warm-up")  # build the boto3 client before timing, as the baselines do
    if op == "fs_metadata_api":  # where the documented API's own clients find the store
        os.environ.update(FEDML_STORAGE_SERVICE="S3", FEDML_STORAGE_BUCKET=BUCKET, FEDML_STORAGE_ENDPOINT_URL=endpoint,
                          FEDML_STORAGE_REGION="us-east-1")
    cpu, server_cpu = _cpu_seconds(), _cpu_seconds(server_pid)
    start = time.perf_counter()
    if op in ("tm_upload_file", "tmreq_upload_file"):  # the two differ in the client's checksum setting
        s3.upload_file(str(big), BUCKET, "baseline/big.bin", Config=_tm_config())
    elif op == "tmsha_upload_file":  # the floor for an upload that records a sha256: hash beside the upload
        from concurrent.futures import ThreadPoolExecutor

        from fedml_storage.digests import sha256_file

        with ThreadPoolExecutor(1) as pool:
            hashing = pool.submit(sha256_file, big)
            s3.upload_file(str(big), BUCKET, "baseline/big.bin", Config=_tm_config())
            hashing.result()
    elif op in ("fs_upload_file", "fsws_upload_file", "fs_reupload_file"):
        client.upload(big).unwrap()
    elif op == "tm_download_file":
        s3.download_file(BUCKET, "baseline/big.bin", str(out / "big.bin"), Config=_tm_config())
    elif op in ("get_download_file", "getsha_download_file"):
        # getsha: the floor for a verified download, hashing as the bytes arrive
        digest = hashlib.sha256() if op.startswith("getsha") else None
        with open(out / "big.bin", "wb") as fh:
            for chunk in s3.get_object(Bucket=BUCKET, Key="baseline/big.bin")["Body"].iter_chunks(1 << 20):
                fh.write(chunk)
                if digest is not None:
                    digest.update(chunk)
    elif op in ("fs_download_file", "fs_redownload_file"):
        assert client.download("big.bin", out).unwrap().skipped == (op == "fs_redownload_file")
    elif op == "zip_upload_dir":
        with tempfile.NamedTemporaryFile(suffix=".zip", dir=scratch) as tmp:
            with zipfile.ZipFile(tmp.name, "w", zipfile.ZIP_STORED) as zf:
                for path in sorted(tree.rglob("*")):
                    zf.write(path, path.relative_to(tree).as_posix())
            s3.upload_file(tmp.name, BUCKET, "baseline/tree.zip", Config=_tm_config())
    elif op in ("fs_upload_dir", "fs_reupload_dir"):
        client.upload(tree).unwrap()
    elif op == "fsig_reupload_dir":
        assert client.upload(tree, ignore_patterns=GITIGNORE).unwrap().skipped
    elif op == "get_download_dir":
        archive = out / "tree.zip"
        with open(archive, "wb") as fh:
            for chunk in s3.get_object(Bucket=BUCKET, Key="baseline/tree.zip")["Body"].iter_chunks(1 << 20):
                fh.write(chunk)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(out / "tree")
    elif op in ("fs_download_dir", "fs_redownload_dir"):
        assert client.download("tree", out).unwrap().skipped == (op == "fs_redownload_dir")
    elif op == "fs_metadata_client":  # the baseline of the next: one client for every call
        for _ in range(API_CALLS):
            client.get_metadata("big.bin").unwrap()
    elif op == "fs_metadata_api":  # each documented call makes its own client, as a pipeline's steps do
        from fedml_storage import api

        for _ in range(API_CALLS):
            api.get_storage_metadata("big.bin", api_key=API_KEY).unwrap()
    else:
        raise SystemExit(f"unknown op {op}")
    seconds = time.perf_counter() - start
    cpu, server_end = _cpu_seconds() - cpu, _cpu_seconds(server_pid)
    shutil.rmtree(out, ignore_errors=True)
    server_cpu = None if server_cpu is None or server_end is None else server_end - server_cpu
    return {"seconds": seconds, "cpu": cpu, "server_cpu": server_cpu}


def child(op: str, endpoint: str, data: Path, scratch: Path, home: Path, server_pid: int) -> dict:
    """Run `op` in a fresh process; its seconds, CPU seconds and peak RSS."""
    env = {**os.environ, "FEDML_STORAGE_HOME": str(home)}
    proc = subprocess.run([sys.executable, __file__, "--op", op, "--endpoint", endpoint, "--data", str(data),
                           "--scratch", str(scratch), "--server-pid", str(server_pid)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{op} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _default_work_dir(size_mib: int) -> str | None:
    """tmpfs when it has room: a VM disk's write-back stalls (0.3-6 s for the same 10k small files here) would
    otherwise swamp what is measured, on both sides; pass --work-dir to measure a real disk. Room for: the data,
    four downloads, moto's spool of two stored copies, the parts of one upload and its assembled object."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > (9 * size_mib + 1024) << 20:
        return str(shm)
    return None


def start_moto(tmp: Path) -> tuple[subprocess.Popen, str]:
    """moto in its own process; its spool files (objects over 512 KiB) go to `tmp`, beside the other data."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import time; from moto.server import ThreadedMotoServer; "
            f"ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False).start(); time.sleep(1e9)")
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TMPDIR": str(tmp)})
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    else:
        proc.kill()
        sys.exit("moto's server did not start within 10 s")
    if proc.poll() is not None:
        sys.exit(f"moto's server exited at once (code {proc.returncode}): run it alone to see why")
    return proc, f"http://127.0.0.1:{port}"


def make_data(data: Path, size_mib: int, files: int, file_kib: int) -> None:
    data.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with open(data / "big.bin", "wb") as fh:
        for i in range(size_mib):
            fh.write(block[i % 251:] + block[: i % 251])  # distinct blocks, cheap to make
    tree = data / "tree"
    for i in range(files):
        sub = tree / f"d{i // 1000:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(os.urandom(file_kib * 1024))
    past = time.time() - 60  # older than the digest cache's racy window, as real data would be
    for path in [data / "big.bin", *tree.rglob("*")]:
        os.utime(path, (past, past))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--file-kib", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs per operation; the best is reported")
    parser.add_argument("--quick", action="store_true", help="128 MiB and 2,000 files")
    parser.add_argument("--work-dir", help="where data and downloads go (default: /dev/shm when it has room)")
    parser.add_argument("--op"), parser.add_argument("--endpoint"), parser.add_argument("--data")
    parser.add_argument("--scratch"), parser.add_argument("--server-pid", type=int)
    args = parser.parse_args()
    if args.op:  # child process
        result = run_op(args.op, args.endpoint, Path(args.data), Path(args.scratch), args.server_pid)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({**result, "rss_mib": rss}))
        return
    if args.quick:
        args.size_mib, args.files = 128, 2000
    if importlib.util.find_spec("moto") is None:
        sys.exit('the benchmark runs a moto S3 server: install the test extra first, pip install -e ".[test]"')
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fedml-bench-", dir=args.work_dir or _default_work_dir(args.size_mib)))
    print(f"work folder: {work} (data, downloads and the digest cache; --work-dir to change)")
    server, endpoint = start_moto(work / "moto-tmp")
    try:
        _s3(endpoint).create_bucket(Bucket=BUCKET)
        print(f"data: {args.size_mib} MiB file, {args.files} x {args.file_kib} KiB files; moto at {endpoint}")
        make_data(work / "data", args.size_mib, args.files, args.file_kib)
        home = work / "home"
        # Ops within a group do not depend on each other; odd rounds run each group backwards, so no side always
        # runs first (moto's timings depend on what ran just before).
        groups = [["tm_upload_file", "tmreq_upload_file", "tmsha_upload_file", "fs_upload_file", "fsws_upload_file"],
                  ["fs_reupload_file"],
                  ["tm_download_file", "get_download_file", "getsha_download_file", "fs_download_file"],
                  ["fs_redownload_file"], ["zip_upload_dir", "fs_upload_dir"], ["fs_reupload_dir", "fsig_reupload_dir"],
                  ["get_download_dir", "fs_download_dir"], ["fs_redownload_dir"],
                  ["fs_metadata_client", "fs_metadata_api"]]
        results: dict[str, dict] = {}
        for round_no in range(args.repeat):
            for op in [op for g in groups for op in (g[::-1] if round_no % 2 else g)]:
                if op.startswith(("fs_upload", "fsws_upload")):
                    shutil.rmtree(home, ignore_errors=True)  # a first upload: empty digest cache
                os.sync()  # earlier runs' write-back must not land in this one's timing
                r = child(op, endpoint, work / "data", work / "scratch", home, server.pid)
                best = results.get(op)
                if best is not None:  # best time, but the highest peak memory of any round
                    r = {**(r if r["seconds"] < best["seconds"] else best),
                         "rss_mib": max(best["rss_mib"], r["rss_mib"])}
                results[op] = r
        report(results, args.size_mib * (1 << 20), args.files * args.file_kib * 1024)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


def report(r: dict[str, dict], file_bytes: int, tree_bytes: int) -> None:
    # CPU floor: the client's and the server's CPU seconds spread over every core, a wall time this work cannot
    # beat on this machine however well it overlaps (no floor when the server's CPU could not be read)
    cores = os.cpu_count() or 1
    floor = {op: (v["cpu"] + v["server_cpu"]) / cores for op, v in r.items() if v.get("server_cpu") is not None}
    print(f"\n{'operation':<20}{'seconds':>9}{'MB/s':>9}{'peak RSS MiB':>14}{'CPU s':>8}{'server CPU s':>14}"
          f"{'CPU floor s':>13}")
    for op, v in r.items():
        size = file_bytes if op.endswith("file") else tree_bytes
        server = f"{v['server_cpu']:>14.2f}{floor[op]:>13.2f}" if op in floor else f"{'-':>14}{'-':>13}"
        print(f"{op:<20}{v['seconds']:>9.3f}{size / v['seconds'] / 1e6:>9.1f}{v['rss_mib']:>14.0f}{v['cpu']:>8.2f}"
              + server)
    t = {op: v["seconds"] for op, v in r.items()}
    fastest_file = min(t["tm_download_file"], t["get_download_file"])
    goals = [
        ("file upload vs TransferManager", t["tm_upload_file"] / t["fs_upload_file"], ">=", 0.95),
        ("  (vs TM, when_required checksums)", t["tmreq_upload_file"] / t["fs_upload_file"], ">=", 0.95),
        ("  (both CRC32: when_supported)", t["tm_upload_file"] / t["fsws_upload_file"], ">=", 0.95),
        ("  (vs TransferManager + sha256)", t["tmsha_upload_file"] / t["fs_upload_file"], ">=", 0.95),
        ("file download vs best baseline", fastest_file / t["fs_download_file"], ">=", 0.9),
        ("  (vs GET + sha256)", t["getsha_download_file"] / t["fs_download_file"], ">=", 0.9),
        ("dir upload vs zip+upload", t["fs_upload_dir"] / t["zip_upload_dir"], "<=", 1.2),
        ("dir download vs GET+unzip", t["get_download_dir"] / t["fs_download_dir"], ">=", 0.9),
        ("file re-upload / first upload", t["fs_reupload_file"] / t["fs_upload_file"], "<", 0.02),
        ("dir re-upload / first upload", t["fs_reupload_dir"] / t["fs_upload_dir"], "<", 0.02),
        ("  (with a .gitignore's 50 patterns)", t["fsig_reupload_dir"] / t["fs_upload_dir"], "<", 0.02),
        ("peak RSS MiB (fedml-storage)", max(v["rss_mib"] for op, v in r.items() if op.startswith("fs_")), "<", 300),
    ]
    print(f"\n{'goal':<34}{'value':>9}  target   verdict")
    for name, value, op, target in goals:
        ok = value >= target if op == ">=" else value <= target if op == "<=" else value < target
        print(f"{name:<34}{value:>9.3f}  {op}{target:<6}  {'PASS' if ok else 'MISS'}")
    print(f"(no goal) re-download of an unchanged copy / first download: file "
          f"{t['fs_redownload_file'] / t['fs_download_file']:.3f}, folder "
          f"{t['fs_redownload_dir'] / t['fs_download_dir']:.3f} (kept: both checked against the stats their "
          "download recorded, no file read)")
    per_call = t["fs_metadata_api"] / API_CALLS * 1e3
    print(f"(no goal) {API_CALLS} documented get_storage_metadata calls / as many on one StorageClient: "
          f"{t['fs_metadata_api'] / t['fs_metadata_client']:.2f} ({per_call:.0f} ms a call)")
    # Can the speed goals be met here at all? Compare the time each allows with the CPU floor of our operation.
    for goal, op, allowed in (("file upload", "fs_upload_file", t["tm_upload_file"] / 0.95),
                              ("file download", "fs_download_file", fastest_file / 0.9)):
        if op in floor:
            verdict = "out of reach with this machine and server" if floor[op] > allowed else "within reach"
            print(f"{goal}: the goal allows {allowed:.2f} s; fedml-storage's CPU floor on {cores} cores is "
                  f"{floor[op]:.2f} s ({verdict})")


if __name__ == "__main__":
    main()
