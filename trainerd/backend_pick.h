/* One rule for choosing the backend by name, for tb-trainerd (daemon.backend) and
 * tb-train-local (--backend): "cpu"; "cuda" (an error without a CUDA build or device);
 * "auto" = cuda when the build has the CUDA backend (TB_HAVE_CUDA_BACKEND) and a device
 * is present, else cpu. Header-only: the CUDA library is linked only by the programs. */
#ifndef TB_BACKEND_PICK_H
#define TB_BACKEND_PICK_H
#include <string.h>
#include "backend.h"
#include "tb_err.h"
#ifdef TB_HAVE_CUDA_BACKEND
#include "backend_cuda.h"
#endif

/* The backend for name, or NULL with err set; *no_device is then 1 when the CUDA backend
 * exists but could not start (no GPU, driver error), 0 for a bad name or a build without it. */
static inline const tb_backend *tb_backend_pick(const char *name, int *no_device, tb_err *err) {
    int want_cuda = !strcmp(name, "cuda"), is_auto = !strcmp(name, "auto");
    *no_device = 0;
    if (!want_cuda && !is_auto) {
        if (!strcmp(name, "cpu")) return tb_backend_cpu();
        tb_err_set(err, "'%s' is not auto, cpu or cuda", name);
        return NULL;
    }
#ifdef TB_HAVE_CUDA_BACKEND
    if (want_cuda || tb_cuda_device_count() > 0) {
        const tb_backend *be = tb_backend_cuda(err);
        if (!be) {
            *no_device = 1;
            tb_err_wrap(err, "cuda");
        }
        return be;
    }
#else
    if (want_cuda) {
        tb_err_set(err, "cuda: this build has no CUDA backend (nvcc was not found when it was "
                        "configured)");
        return NULL;
    }
#endif
    return tb_backend_cpu();
}

#endif
