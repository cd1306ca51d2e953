"""Captions to shards on one machine or a farm of many: resumable, claimed shard by shard.

    run.py       generate(config): the shards of one output folder, with GenerateSummary
    config.py    GenerateConfig: every setting, checked; what dataset.json records
    captions.py  caption files (.txt, .csv/.tsv, .parquet, .jsonl)
    seeds.py     initial noise from (seed, caption, image) alone
    ranks.py     where a process stands in the farm: world size, rank, device
    claims.py    dynamic shard claims, heartbeats and takeovers
    writer.py    one shard written and published atomically; the output folder checked
    status.py    farm_status: shards done, claimed and left, rates and ETA
"""
