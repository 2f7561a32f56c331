"""Benchmarks of chatledger against baselines measured in the same run.

`python -m bench` starts its own redis-server on a free port, the service with the offline model and the
baseline servers, drives them from 127.0.0.1, and prints one Markdown table where every figure stands
next to its baseline. Machines are noisy, so the ratios are the result; the absolute figures only say
what this machine did at that moment. `python -m bench --smoke` runs every step with tiny counts, which
the test suite uses to keep the runner working (never to judge speed).
"""
