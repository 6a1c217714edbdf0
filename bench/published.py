"""Published numbers our results tables print beside their own, each with its source.

These come from the papers' own protocols (for the HKUDS line of work: the best epoch chosen on the test
set, full ranking, their split), so they are a reference, not a row of our table.

    from published import PUBLISHED, SOURCES
    PUBLISHED['tiktok']['LATTICE']      # ({'recall': 0.0843, 'precision': 0.0042, 'ndcg': 0.0367}, 'DiffMM')
"""

SOURCES = {
    'DiffMM': 'Jiang et al., "DiffMM: Multi-Modal Diffusion Model for Recommendation", ACM MM 2024, Table 1 '
              '(the TikTok rows, as HKUDS/DiffMM fae20e6 shows them in figures/performance.png); the best epoch '
              'by test Recall@20',
    'MMSSL': 'Wei et al., "Multi-Modal Self-Supervised Learning for Recommendation", WWW 2023 (TikTok)',
}


def _at20(recall, precision, ndcg):
    return {'recall': recall, 'precision': precision, 'ndcg': ndcg}


# dataset -> our model name -> (metrics at 20, source key); models the papers report under another name are
# mapped to ours (MF-BPR -> BPR).  Precision is None where the source does not give it.
PUBLISHED = {
    'tiktok': {
        'BPR': (_at20(0.0346, 0.0017, 0.0130), 'DiffMM'),
        'LightGCN': (_at20(0.0653, 0.0033, 0.0282), 'DiffMM'),
        'VBPR': (_at20(0.0380, 0.0018, 0.0134), 'DiffMM'),
        'MMGCN': (_at20(0.0730, 0.0036, 0.0307), 'DiffMM'),
        'GRCN': (_at20(0.0804, 0.0036, 0.0350), 'DiffMM'),
        'LATTICE': (_at20(0.0843, 0.0042, 0.0367), 'DiffMM'),
        'SLMRec': (_at20(0.0845, 0.0042, 0.0353), 'DiffMM'),
        'BM3': (_at20(0.0957, 0.0048, 0.0404), 'DiffMM'),
        'MMSSL': (_at20(0.0921, None, 0.0392), 'MMSSL'),
        'DiffMM': (_at20(0.1129, 0.0056, 0.0456), 'DiffMM'),
    },
}
