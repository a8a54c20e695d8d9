"""Which llama.cpp backends provision builds, and on which container OS: the rules and their evidence.

Checked when the host file is loaded (from ``container.template``) and again when planning
(from the container's own /etc/os-release), so a refusal names the reason and the fix before
anything is installed or compiled.
"""

from __future__ import annotations

import re

_TEMPLATE_OS = re.compile(r"(?:^|[/:])([a-z]+)-(\d+(?:\.\d+)?)-")


def template_os(template: str) -> str | None:
    """``debian-12-standard[_12.12-1_amd64.tar.zst]`` → ``debian 12`` (what /etc/os-release's
    ``$ID $VERSION_ID`` says in a container made from it), None when the name does not tell."""
    m = _TEMPLATE_OS.search(template)
    return f"{m.group(1)} {m.group(2)}" if m else None


# Vulkan: llama.cpp b11312 ggml/src/ggml-vulkan/ggml-vulkan.cpp:5214-5223 uses vk::LayerSettingEXT and
# vk::LayerSettingsCreateInfoEXT unconditionally (no VK_HEADER_VERSION guard, unlike :676 and :4828).
# They come with VK_EXT_layer_settings, first in Vulkan-Headers v1.3.272 (KhronosGroup/Vulkan-Headers
# 19a863cc, include/vulkan/vulkan_core.h:17800 and :17815; absent from v1.3.271). Debian 12's
# libvulkan-dev is 1.3.239.0-1 (bookworm main, pool/main/v/vulkan-loader/libvulkan-dev_1.3.239.0-1_amd64.deb,
# its vulkan_core.h says VK_HEADER_VERSION 239): g++ stops with "'LayerSettingEXT' is not a member of
# 'vk'". Debian 13's is 1.4.309.0-1 (trixie main Packages), with glslc 2025.2-1.
VULKAN_TOO_OLD = {"debian 12": "1.3.239"}
VULKAN_NEEDS = "1.3.272"

# ROCm: b11312 ggml/src/ggml-hip/CMakeLists.txt:54-55 stops at configure time below HIP 6.1 ("At least
# ROCM/HIP V6.1 is required") and :46-48 needs hipBLAS and rocBLAS. Debian 12 has HIP 5.2.3 (hipcc,
# libamdhip64-dev 5.2.3-8) and no hipBLAS/rocBLAS packages; Debian 13 has HIP 5.7.1 (5.7.1-6+deb13u1),
# libhipblas-dev 5.5.1-4, librocblas-dev 5.5.1+dfsg-7 (bookworm/trixie main Packages). Only AMD's own
# ROCm repository has 6.1+, and provision does not install it.
ROCM_REASON = ("llama.cpp (b11312) needs ROCm/HIP 6.1 or newer with hipBLAS and rocBLAS "
               "(ggml/src/ggml-hip/CMakeLists.txt:54); Debian 12 has HIP 5.2 and no hipBLAS/rocBLAS, Debian 13 "
               "has HIP 5.7 with hipBLAS/rocBLAS 5.5; only AMD's own ROCm repository has 6.1+, which provision "
               "does not install, and provision does not pass AMD GPUs (/dev/kfd, /dev/dri) into the container")
ROCM_FIX = ("use llama_cpp.backend: cpu (or cuda on an NVIDIA GPU); to serve an AMD GPU today, install ROCm "
            "6.1+ from AMD's repository in the container yourself, pass /dev/kfd and /dev/dri/renderD* through "
            "(pct set ... --devN) and build llama.cpp with -DGGML_HIP=ON by hand")


def refusal(backend: str, os_release: str | None) -> tuple[str, str] | None:
    """(reason, fix) when ``backend`` cannot be built on a container running ``os_release``, else None."""
    if backend == "rocm":
        return ROCM_REASON, ROCM_FIX
    if backend == "vulkan" and os_release in VULKAN_TOO_OLD:
        have = VULKAN_TOO_OLD[os_release]
        reason = (f"the Vulkan backend does not compile on {os_release.title()}: its Vulkan headers are {have}, "
                  f"llama.cpp (b11312) uses VK_EXT_layer_settings (vk::LayerSettingEXT, ggml-vulkan.cpp:5214), "
                  f"which came with Vulkan-Headers {VULKAN_NEEDS}")
        fix = ("use a Debian 13 template (container.template: debian-13-standard; Vulkan headers 1.4.309), "
               "or llama_cpp.backend: cpu")
        return reason, fix
    return None
