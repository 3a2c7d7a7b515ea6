"""Summarise an LD_DEBUG=bindings log: for C++ runtime symbols (_ZNS*, _ZNKS*, _ZSt*), count the
bindings from each llama/ggml/libstdc++ file to each defining file. Shows which libstdc++ copy wins.

    LD_DEBUG=bindings LD_DEBUG_OUTPUT=/tmp/b python ...; python benchmarks/bind_summary.py /tmp/b.*
"""

import collections
import os
import re
import sys

pattern = re.compile(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]: normal symbol `(_ZNS|_ZNKS|_ZSt)")
counts = collections.Counter()
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        m = pattern.search(line)
        if m and re.search(r"llama|ggml|stdc\+\+", m.group(1) + m.group(2)):
            counts[(os.path.basename(m.group(1)), os.path.basename(m.group(2)))] += 1
for (src, dst), n in counts.most_common(25):
    print(f"{n:6d}  {src} -> {dst}")
