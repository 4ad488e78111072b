"""RQ jobs: score utterances against the caller's baseline, aggregate calls, raise triage flags."""
