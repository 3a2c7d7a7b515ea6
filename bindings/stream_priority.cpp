// See stream_priority.h. The GOT slot is found the way the dynamic linker fills it: walk
// libggml-cuda's PLT and GLOB_DAT relocations, match the symbol name, write our wrapper's address.
// The real functions come from dlsym on libggml-cuda's own handle, which searches only that
// library and its dependencies (its libcudart), never our wrapper or another CUDA runtime.
#include "stream_priority.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#if defined(__linux__)
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace {

using create_with_flags_fn    = int (*)(void **, unsigned int);
using create_with_priority_fn = int (*)(void **, unsigned int, int);
using priority_range_fn       = int (*)(int *, int *);

const char * const CREATE_SYMBOL = "cudaStreamCreateWithFlags";

create_with_flags_fn    real_create          = nullptr;
create_with_priority_fn real_create_priority = nullptr;
std::atomic<int>        requested_priority{0};
std::atomic<int>        n_raised{0};
std::mutex              install_mutex;
rast_stream_priority_status status;
bool                    attempted = false;

int create_stream(void ** stream, unsigned int flags) {
    const int priority = requested_priority.load();
    if (priority != 0) {
        const int rc = real_create_priority(stream, flags, priority);
        if (rc == 0) n_raised.fetch_add(1);
        return rc;
    }
    return real_create(stream, flags);
}

#if defined(__linux__)

struct library_info {
    std::string            path;
    ElfW(Addr)             base  = 0;
    const ElfW(Phdr) *     phdr  = nullptr;
    ElfW(Half)             phnum = 0;
};

int find_ggml_cuda(struct dl_phdr_info * info, size_t, void * data) {
    const char * name = info->dlpi_name;
    if (name == nullptr || std::strstr(name, "libggml-cuda") == nullptr) return 0;
    auto * found = static_cast<library_info *>(data);
    *found = {name, info->dlpi_addr, info->dlpi_phdr, info->dlpi_phnum};
    return 1;
}

// glibc rewrites d_ptr in place to absolute addresses; other loaders leave them relative.
template <typename T> const T * dyn_ptr(ElfW(Addr) base, ElfW(Addr) value) {
    return reinterpret_cast<const T *>(value < base ? base + value : value);
}

bool is_slot_relocation(uint32_t type) {
#if defined(__x86_64__)
    return type == R_X86_64_JUMP_SLOT || type == R_X86_64_GLOB_DAT;
#elif defined(__aarch64__)
    return type == R_AARCH64_JUMP_SLOT || type == R_AARCH64_GLOB_DAT;
#else
    (void) type;
    return false;
#endif
}

// Addresses of the GOT slots that hold `symbol` for this library (PLT and GLOB_DAT relocations).
std::vector<void **> find_slots(const library_info & lib, const char * symbol) {
    const ElfW(Dyn) * dynamic = nullptr;
    for (ElfW(Half) i = 0; i < lib.phnum; ++i) {
        if (lib.phdr[i].p_type == PT_DYNAMIC) {
            dynamic = reinterpret_cast<const ElfW(Dyn) *>(lib.base + lib.phdr[i].p_vaddr);
        }
    }
    std::vector<void **> slots;
    if (dynamic == nullptr) return slots;
    const ElfW(Sym) * symtab = nullptr;
    const char *      strtab = nullptr;
    const ElfW(Rela) * tables[2] = {nullptr, nullptr};
    size_t             sizes[2]  = {0, 0};
    bool               rela_plt  = true;
    for (const ElfW(Dyn) * d = dynamic; d->d_tag != DT_NULL; ++d) {
        switch (d->d_tag) {
            case DT_SYMTAB:   symtab    = dyn_ptr<ElfW(Sym)>(lib.base, d->d_un.d_ptr); break;
            case DT_STRTAB:   strtab    = dyn_ptr<char>(lib.base, d->d_un.d_ptr); break;
            case DT_JMPREL:   tables[0] = dyn_ptr<ElfW(Rela)>(lib.base, d->d_un.d_ptr); break;
            case DT_PLTRELSZ: sizes[0]  = d->d_un.d_val; break;
            case DT_PLTREL:   rela_plt  = d->d_un.d_val == DT_RELA; break;
            case DT_RELA:     tables[1] = dyn_ptr<ElfW(Rela)>(lib.base, d->d_un.d_ptr); break;
            case DT_RELASZ:   sizes[1]  = d->d_un.d_val; break;
            default: break;
        }
    }
    if (symtab == nullptr || strtab == nullptr || !rela_plt) return slots;
    for (int t = 0; t < 2; ++t) {
        if (tables[t] == nullptr) continue;
        for (size_t k = 0; k < sizes[t] / sizeof(ElfW(Rela)); ++k) {
            const ElfW(Rela) & rel = tables[t][k];
            if (!is_slot_relocation(ELF64_R_TYPE(rel.r_info))) continue;
            const ElfW(Sym) & sym = symtab[ELF64_R_SYM(rel.r_info)];
            if (std::strcmp(strtab + sym.st_name, symbol) == 0) {
                slots.push_back(reinterpret_cast<void **>(lib.base + rel.r_offset));
            }
        }
    }
    return slots;
}

bool write_slot(void ** slot, void * value) {
    const uintptr_t page_size = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t page      = reinterpret_cast<uintptr_t>(slot) & ~(page_size - 1);
    // The slot sits in RELRO (read-only after relocation) or in a writable .got.plt: open the page,
    // write, and leave it read-only again only where it was (RELRO pages are never written later).
    if (mprotect(reinterpret_cast<void *>(page), page_size, PROT_READ | PROT_WRITE) != 0) return false;
    __atomic_store_n(slot, value, __ATOMIC_SEQ_CST);
    return true;
}

void protect_relro(const library_info & lib) {
    const uintptr_t page_size = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    for (ElfW(Half) i = 0; i < lib.phnum; ++i) {
        if (lib.phdr[i].p_type != PT_GNU_RELRO) continue;
        const uintptr_t start = (lib.base + lib.phdr[i].p_vaddr) & ~(page_size - 1);
        const uintptr_t end   = (lib.base + lib.phdr[i].p_vaddr + lib.phdr[i].p_memsz) & ~(page_size - 1);
        if (end > start) mprotect(reinterpret_cast<void *>(start), end - start, PROT_READ);
    }
}

void install_locked() {
    library_info lib;
    if (dl_iterate_phdr(find_ggml_cuda, &lib) == 0) {
        status.detail = "no libggml-cuda in this process (not a CUDA build of llama.cpp)";
        return;
    }
    void * handle = dlopen(lib.path.c_str(), RTLD_NOLOAD | RTLD_LAZY);
    if (handle == nullptr) {
        status.detail = "cannot reopen " + lib.path;
        return;
    }
    real_create          = reinterpret_cast<create_with_flags_fn>(dlsym(handle, CREATE_SYMBOL));
    real_create_priority = reinterpret_cast<create_with_priority_fn>(dlsym(handle, "cudaStreamCreateWithPriority"));
    auto range           = reinterpret_cast<priority_range_fn>(dlsym(handle, "cudaDeviceGetStreamPriorityRange"));
    dlclose(handle);  // RTLD_NOLOAD took a reference only; libllama keeps the library loaded
    if (real_create == nullptr || real_create_priority == nullptr || range == nullptr) {
        status.detail = "the CUDA runtime of " + lib.path + " lacks the stream priority functions";
        return;
    }
    if (range(&status.least, &status.greatest) != 0) {
        status.detail = "cudaDeviceGetStreamPriorityRange failed (no usable CUDA device)";
        return;
    }
    const std::vector<void **> slots = find_slots(lib, CREATE_SYMBOL);
    if (slots.empty()) {
        status.detail = std::string(lib.path) + " does not import " + CREATE_SYMBOL + " through its GOT";
        return;
    }
    for (void ** slot : slots) {
        if (!write_slot(slot, reinterpret_cast<void *>(&create_stream))) {
            status.detail = "cannot write the GOT of " + lib.path;
            return;
        }
    }
    protect_relro(lib);
    status.installed = true;
    status.detail    = lib.path;
}

#else

void install_locked() { status.detail = "stream priorities are implemented for Linux CUDA builds only"; }

#endif

}  // namespace

rast_stream_priority_status rast_stream_priority_install() {
    std::lock_guard<std::mutex> lock(install_mutex);
    if (!attempted) {
        attempted = true;
        install_locked();
    }
    return status;
}

int rast_stream_priority_set(int priority) {
    std::lock_guard<std::mutex> lock(install_mutex);
    if (!status.installed) return 0;
    // CUDA counts urgency downwards: greatest <= priority <= least
    priority = std::max(status.greatest, std::min(status.least, priority));
    requested_priority.store(priority);
    return priority;
}

int rast_stream_priority_n_raised() { return n_raised.load(); }
