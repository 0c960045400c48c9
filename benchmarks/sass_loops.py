"""Instruction counts of the loops in a kernel's SASS: the check that the hot loop does only what it must.

    nvcc -cubin -arch=sm_90a -O3 -I fdlite_kernels -o /tmp/k.cubin fdlite_kernels/gemv_packed.cu
    python benchmarks/sass_loops.py /tmp/k.cubin [--match 'ILi4ELi1ELi8E'] [--nvdisasm PATH]

For every function whose mangled name contains --match: each backward branch (a loop) with its size in
instructions and how many of them are HMMA, LDG/LDS/LDSM, IMAD.MOV/MOV (register shuffles) and I2F/MUFU (the
tell-tale of an integer division). nvdisasm is not part of the CUDA image here: `pip download --no-deps
nvidia-cuda-nvdisasm` and unzip the wheel (a development tool; nothing at run time needs it).
"""
import argparse
import collections
import re
import subprocess

INS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
BRA = re.compile(r"BRA\s+`?\(?\.?(L_x_\d+)")


def functions(sass: str):
    parts = re.split(r"//-+ \.text\.(\S+) -+\n", sass)
    for i in range(1, len(parts), 2):
        yield parts[i], parts[i + 1]


def loops(body: str):
    labels, ins = {}, []
    for line in body.split("\n"):
        m = re.match(r"\s*\.(L_x_\d+):", line)
        if m:
            labels[m.group(1)] = len(ins)
            continue
        m = INS.search(line)
        if m:
            ins.append((m.group(3), m.group(4)))
    for i, (op, rest) in enumerate(ins):
        if op == "BRA":
            b = BRA.search(op + rest)
            if b and b.group(1) in labels and labels[b.group(1)] <= i:
                yield ins[labels[b.group(1)]: i + 1]


def kinds(seg):
    c = collections.Counter()
    for op, _ in seg:
        base = op.split(".")[0]
        if op.startswith("HMMA"):
            c["mma"] += 1
        elif base in ("LDG", "LDS", "LDSM", "LDGSTS", "LD"):
            c["load"] += 1
        elif op.startswith("IMAD.MOV") or base == "MOV":
            c["mov"] += 1
        elif base in ("I2F", "MUFU", "F2I"):
            c["div?"] += 1
        elif base in ("LOP3", "SHF", "PRMT", "IADD3", "LEA", "IMAD", "ISETP", "VIADD", "IABS", "SEL"):
            c["int"] += 1
        elif base in ("HFMA2", "FFMA", "FADD", "FMUL", "HADD2", "HMUL2"):
            c["fp"] += 1
        else:
            c["other"] += 1
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cubin")
    ap.add_argument("--match", default="")
    ap.add_argument("--nvdisasm", default="nvdisasm")
    a = ap.parse_args()
    sass = subprocess.run([a.nvdisasm, "-c", a.cubin], check=True, capture_output=True, text=True).stdout
    for name, body in functions(sass):
        if a.match not in name:
            continue
        print(name)
        for seg in loops(body):
            k = kinds(seg)
            if k["mma"] or len(seg) > 40:
                print(f"  loop of {len(seg):4d}: " + " ".join(f"{key} {v}" for key, v in sorted(k.items())))


if __name__ == "__main__":
    main()
