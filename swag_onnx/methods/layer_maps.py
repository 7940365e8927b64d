"""Registry entries of the layer-based maps made from the shared gradient run (Grad-CAM and its
family, NormGrad): one row of LAYER_MAPS each.

Every map is ``fn(act (K, h, w), grad (K, h, w)) -> (h, w)`` (swag_onnx.methods.cam), computed at
each requested layer; several layers are upsampled, normalised and combined by ``combine``.
"""

from __future__ import annotations

from typing import Annotated

from swag_onnx.methods import cam
from swag_onnx.methods.registry import Inputs, Output, input_size, method
from swag_onnx.validation import Choice

COMBINE = Choice(cam.COMBINE_MODES)
COMBINE_HELP = "how maps of several layers combine (after upsampling and normalising each)"

# name: (map function, what it computes, reference and parity)
LAYER_MAPS = {
    "gradcam": (cam.gradcam, "ReLU(sum_k mean_u(G_k) A_k) at the layer(s)",
                "Selvaraju et al., ICCV 2017; pytorch-grad-cam GradCAM: Pearson 0.99999"),
    "gradcam++": (cam.gradcam_plus_plus, "the paper's Eq. 19: alpha = G^2 / (2G^2 + sum_u A_k "
                  "G^3), weights sum_u alpha ReLU(G)",
                  "Chattopadhyay et al., WACV 2018; pytorch-grad-cam adds 1e-6 to the "
                  "denominator (identical with that epsilon)"),
    "normgrad": (cam.normgrad, "||A_u|| ||G_u|| per location",
                 "Rebuffi et al., CVPR 2020; explicit loops"),
    "normgrad-selective": (cam.normgrad_selective, "||max(A_u G_u, 0)|| per location",
                           "Rebuffi et al., CVPR 2020; explicit loops"),
    "hirescam": (cam.hirescam, "ReLU(sum_k G_k A_k), element-wise (no spatial mean of G)",
                 "Draelos and Carin, 2020; pytorch-grad-cam HiResCAM: Pearson 1 - 6e-13"),
    "xgradcam": (cam.xgradcam, "weights sum_u (A_k / sum_u A_k) G_k; ReLU(sum_k w_k A_k)",
                 "Fu et al., BMVC 2020; pytorch-grad-cam XGradCAM: Pearson 1 - 6e-13"),
    "layercam": (cam.layercam, "ReLU(sum_k ReLU(G_k) A_k), element-wise",
                 "Jiang et al., TIP 2021; pytorch-grad-cam LayerCAM: Pearson 1 - 7e-13"),
    "eigencam": (cam.eigencam, "activations projected on their first principal component "
                 "(no gradient); sign: loadings summing to >= 0",
                 "Muhammad and Yeasin, IJCNN 2020; pytorch-grad-cam EigenCAM: Pearson 1 - 6e-14"),
    "eigengradcam": (cam.eigengradcam, "EigenCAM of A * G",
                     "pytorch-grad-cam EigenGradCAM: Pearson 1 - 4e-14"),
}


def _register(name: str, fn, summary: str, reference: str) -> None:
    def run(inputs: Inputs, *,
            combine: Annotated[str, COMBINE, COMBINE_HELP] = "product") -> Output:
        maps = [fn(act, grad) for act, grad in inputs.layers]
        return Output(cam.combine_layers(maps, input_size(inputs), mode=combine),
                      info={"layers": list(inputs.layer_names)})

    run.__name__ = f"_{name}"
    method(name, needs={"layers"}, summary=summary, reference=reference, meta=True)(run)


for _name, (_fn, _summary, _reference) in LAYER_MAPS.items():
    _register(_name, _fn, _summary, _reference)
