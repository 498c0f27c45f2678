// C API over libsentencepiece (see tb_spm.h). The only C++ in common/: every entry point
// catches all exceptions and reports through tb_err, so nothing unwinds into C.
#include <sentencepiece_processor.h>

#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <string_view>
#include <vector>

// The C headers carry no extern "C" guards of their own.
extern "C" {
#include "tb_err.h"
#include "tb_spm.h"
}

struct tb_spm {
    sentencepiece::SentencePieceProcessor sp;
    std::string path;
    int32_t size = 0;
    tb_spm_specials specials{};
};

namespace {

// Id of a piece, or -1 where the model does not hold it (PieceToId answers unk_id then).
int32_t piece_id(const sentencepiece::SentencePieceProcessor &sp, std::string_view piece) {
    int id = sp.PieceToId(piece);
    if (id < 0 || id >= sp.GetPieceSize()) return -1;
    if (sp.IdToPiece(id) != piece) return -1;
    return id;
}

}  // namespace

extern "C" tb_spm *tb_spm_load(const char *model_path, tb_err *err) {
    if (model_path == nullptr) {
        tb_err_set(err, "spm: model path is NULL");
        return nullptr;
    }
    tb_spm *spm = nullptr;
    try {
        spm = new tb_spm();
        spm->path = model_path;
        auto st = spm->sp.Load(model_path);
        if (!st.ok()) {
            tb_err_set(err, "spm: cannot load model '%s': %s", model_path, st.ToString().c_str());
            delete spm;
            return nullptr;
        }
        int n = spm->sp.GetPieceSize();
        if (n <= 0) {
            tb_err_set(err, "spm: model '%s' has no pieces", model_path);
            delete spm;
            return nullptr;
        }
        spm->size = n;
        const sentencepiece::SentencePieceProcessor &sp = spm->sp;
        spm->specials.cls = piece_id(sp, "[CLS]");
        spm->specials.sep = piece_id(sp, "[SEP]");
        spm->specials.mask = piece_id(sp, "[MASK]");
        spm->specials.pad = piece_id(sp, "[PAD]");
        spm->specials.unk = piece_id(sp, "<unk>");
        spm->specials.bos = piece_id(sp, "<s>");
        spm->specials.eos = piece_id(sp, "</s>");
        return spm;
    } catch (const std::exception &e) {
        tb_err_set(err, "spm: cannot load model '%s': %s", model_path, e.what());
    } catch (...) {
        tb_err_set(err, "spm: cannot load model '%s': unknown exception", model_path);
    }
    delete spm;
    return nullptr;
}

extern "C" void tb_spm_free(tb_spm *spm) {
    try {
        delete spm;
    } catch (...) {
    }
}

extern "C" int32_t tb_spm_vocab_size(const tb_spm *spm) { return spm ? spm->size : 0; }

extern "C" int64_t tb_spm_encode(const tb_spm *spm, const char *text, size_t len, int32_t *out,
                                 size_t cap, tb_err *err) {
    if (spm == nullptr || (text == nullptr && len > 0) || (out == nullptr && cap > 0)) {
        tb_err_set(err, "spm: encode called with a NULL %s",
                   spm == nullptr ? "model" : text == nullptr ? "text" : "output buffer");
        return -1;
    }
    try {
        std::vector<int> ids;
        auto st = spm->sp.Encode(std::string_view(len ? text : "", len), &ids);
        if (!st.ok()) {
            tb_err_set(err, "spm: encode with '%s' failed on %zu bytes: %s", spm->path.c_str(),
                       len, st.ToString().c_str());
            return -1;
        }
        size_t n = ids.size() < cap ? ids.size() : cap;
        for (size_t i = 0; i < n; i++) out[i] = (int32_t)ids[i];
        return (int64_t)ids.size();
    } catch (const std::bad_alloc &) {
        tb_err_set(err, "spm: out of memory encoding %zu bytes", len);
    } catch (const std::exception &e) {
        tb_err_set(err, "spm: encode with '%s' failed on %zu bytes: %s", spm->path.c_str(), len,
                   e.what());
    } catch (...) {
        tb_err_set(err, "spm: encode with '%s' failed on %zu bytes: unknown exception",
                   spm->path.c_str(), len);
    }
    return -1;
}

extern "C" const char *tb_spm_id_to_piece(const tb_spm *spm, int32_t id) {
    if (spm == nullptr || id < 0 || id >= spm->size) return nullptr;
    try {
        return spm->sp.IdToPiece(id).c_str();
    } catch (...) {
        return nullptr;
    }
}

extern "C" int32_t tb_spm_piece_to_id(const tb_spm *spm, const char *piece) {
    if (spm == nullptr || piece == nullptr) return -1;
    try {
        return piece_id(spm->sp, piece);
    } catch (...) {
        return -1;
    }
}

extern "C" int tb_spm_is_special(const tb_spm *spm, int32_t id) {
    if (spm == nullptr || id < 0 || id >= spm->size) return 0;
    try {
        return spm->sp.IsControl(id) || spm->sp.IsUnknown(id) || spm->sp.IsUnused(id);
    } catch (...) {
        return 0;
    }
}

extern "C" tb_spm_specials tb_spm_get_specials(const tb_spm *spm) {
    if (spm == nullptr) return tb_spm_specials{-1, -1, -1, -1, -1, -1, -1};
    return spm->specials;
}
