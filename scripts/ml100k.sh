#!/usr/bin/env bash
# Every model on MovieLens-100K with its published hyper-parameters, one run after the other.
#
#   bash scripts/ml100k.sh                       # all runs; results appended to $SAVE
#   bash scripts/ml100k.sh --seed 2 --no-cuda    # extra flags go to every run (and override the ones below)
#
# The dataset is prepared on first use (python prepare_data.py ml100k).  Change a value here, not in the lines.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=ml100k
SEED=1
TOPK="10 20"                 # the first K selects the best epoch (validation Recall@K)
PATIENCE=20
SAVE=results_ml100k.jsonl

# SLMRec (Tao et al. 2022; SPEC 3.4)
SLM_LR=0.01
SLM_WD=1e-4                  # Adam weight decay
SLM_BATCH=2048
SLM_LAYERS=3
SLM_EPOCHS=40
SLM_DIM=64
SSL_ALPHA=0.1
SSL_TEMP=0.2
TEMP=0.2
DROPOUT=0.3                  # FD

# MMGCN (Wei et al. 2019)
MM_LR=0.0005
MM_LAMBDA=0.1                # --weight_decay is MMGCN's regulariser λ
MM_BATCH=1024
MM_LAYERS=2
MM_EPOCHS=1000               # early stopping ends it (patience above)
MM_DIM=64
MM_AGGR=mean
MM_CONCAT=False

COMMON="--data_path $DATA --seed $SEED --topK $TOPK --patience $PATIENCE --save_file $SAVE"
SLM="--model_name SLMRec --l_r $SLM_LR --weight_decay $SLM_WD --batch_size $SLM_BATCH --num_layer $SLM_LAYERS \
     --num_epoch $SLM_EPOCHS --dim_latent $SLM_DIM --ssl_alpha $SSL_ALPHA --ssl_temp $SSL_TEMP --temp $TEMP \
     --dropout_rate $DROPOUT"

python main.py $COMMON $SLM --ssl_task FAC "$@"
python main.py $COMMON $SLM --ssl_task FD "$@"
python main.py $COMMON $SLM --ssl_task FM "$@"
python main.py $COMMON $SLM --ssl_task FD+FM "$@"
python main.py $COMMON $SLM --ssl_task none "$@"
python main.py $COMMON --model_name MMGCN --l_r $MM_LR --weight_decay $MM_LAMBDA --batch_size $MM_BATCH \
    --num_layer $MM_LAYERS --num_epoch $MM_EPOCHS --dim_latent $MM_DIM --aggr_mode $MM_AGGR --concat $MM_CONCAT "$@"

# The models they are compared with, each with its authors' published defaults (registry entries, `python
# main.py --help`); give a model's own flags here to change them, e.g. --model_name FREEDOM --knn_k 5.
for MODEL in BPR LightGCN VBPR GRCN LATTICE FREEDOM BM3 MGCN LGMRec PGL SMORE DRAGON; do
    python main.py $COMMON --model_name $MODEL "$@"
done
