"""The training pipeline's library: one plain function per step (`steps`, `merge`), the recurring-run
schedule check (`cron`), and compiling, submitting, scheduling and local runs (`client`).

The KFP components in `components/` are thin wrappers over these functions; everything here takes and
returns plain values, so it is tested and reused without KFP (`client` alone imports kfp).
"""
