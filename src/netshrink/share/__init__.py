"""Weight sharing: per-layer k-means with centroid fine-tuning (Han et al. 2016; Kim et al.;
Al-Hami et al.), product and residual quantization and binarization (Gong et al. 2014), soft
weight-sharing under a Gaussian-mixture prior (Ullrich et al. 2017), and SVD low-rank
factorization (Denton et al. 2014). Codebooks are parametrizations
(`weight = centroids[indices] * mask`); SVD is a structural edit."""

from .codebooks import ScalarCodebook, SignCodebook, VectorCodebook, shared_layers
from .kmeans import KMeans1d, init_centroids, kmeans_1d
from .product import SharePqConfig, ShareRqConfig, share_pq, share_rq
from .scalar import ShareBinaryConfig, ShareKmeansConfig, binarize, share_binary, share_kmeans
from .soft import ShareSoftConfig, share_soft
from .svd import FactorSvdConfig, choose_rank, factor_svd, factored_layers
from .vq import VectorCodes, decode, kmeans_vectors, product_quantize, residual_quantize

__all__ = [
    "FactorSvdConfig",
    "KMeans1d",
    "ScalarCodebook",
    "ShareBinaryConfig",
    "ShareKmeansConfig",
    "SharePqConfig",
    "ShareSoftConfig",
    "ShareRqConfig",
    "SignCodebook",
    "VectorCodebook",
    "VectorCodes",
    "binarize",
    "choose_rank",
    "decode",
    "factor_svd",
    "factored_layers",
    "init_centroids",
    "kmeans_1d",
    "kmeans_vectors",
    "product_quantize",
    "residual_quantize",
    "share_binary",
    "share_kmeans",
    "share_pq",
    "share_rq",
    "share_soft",
    "shared_layers",
]
