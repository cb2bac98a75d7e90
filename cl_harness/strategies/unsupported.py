"""Avalanche strategies and plugins that cannot work with a transformer text classifier, and why.

Listed by ``cl-harness strategies --all`` so users see that they were considered, not forgotten.
"""

from __future__ import annotations

UNSUPPORTED: dict[str, str] = {
    "ar1": "AR1 is built around a specific MobileNetV1 CNN with latent-replay layers",
    "cwr_star": "CWR* consolidates the weights of one named output layer; the harness's scenario heads mask or split units instead",
    "expert_gate": "Expert Gate trains an AlexNet autoencoder gate per task on image features",
    "l2p": "Learning to Prompt (L2P) needs a ViT backbone from timm with its prompt pool",
    "generative_replay": "generative replay needs a generator (Avalanche's is an image VAE); no text generator is provided",
    "scr": "Supervised Contrastive Replay relies on image augmentations for its two views",
    "cope": "CoPE replaces the classifier with prototypes over a normalised embedding and needs its own output layer",
    "deep_slda": "Deep SLDA trains only a streaming LDA head over frozen image features of a fixed CNN",
    "lamaml": "La-MAML needs the `higher` meta-learning package and functional model copies of the full backbone",
    "rar": "Repeated Augmented Rehearsal uses image augmentations (and adversarial images) for its replay",
    "icarl": "iCaRL needs a separate feature extractor and NCM classifier with image herding transforms; "
    "its exemplar management is covered by replay(class_balanced) + lwf",
    "bic": "Bias Correction adds a post-hoc layer trained on a held-out validation split per task, which the harness's "
    "streams do not define",
    "feature_replay": "feature replay stores latent activations of a fixed, frozen lower network; full fine-tuning changes them",
    "gss_greedy": "GSS-greedy needs the input shape of image tensors to size its gradient buffers",
    "mer": "MER (meta-experience replay) performs per-example Reptile updates, impractical with a 22M-parameter backbone",
}
