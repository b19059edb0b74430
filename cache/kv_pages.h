// Paged row storage for the KV cache: rows of one fixed size, a power of two of them to a
// page, the pages taken from and handed back to a pool shared by every (layer, KV head) of
// one cache.
//
// Why pages rather than one growing array per head: a head's rows never move when it
// grows (a doubling array copies every row it holds and briefly needs twice the memory,
// a long stall at a long context); the memory a head holds is its rows rounded up to one
// page, not up to the next power of two; and a page emptied by eviction or truncation goes
// back to the pool, where any other head (or the next conversation, after a Clear) takes it
// without a trip to the allocator, so a compressing cache in steady decode allocates
// nothing. (vLLM's PagedAttention, Kwon et al. 2023, pages the KV cache for the same
// reasons across sequences; here one sequence's heads share the pages.)
//
// Rows stay dense, 0..size()-1: Remove moves the last live rows into the holes and gives
// the emptied pages at the end back, so a head holds ceil(size / rows per page) pages.
// Callers address rows by index and rewrite their indices through Remove's remap.
//
// Thread-safety: a KvPagePool may be used from several threads (the cache compresses its
// heads in parallel); a KvRows by one thread at a time.
#ifndef MOEX_CACHE_KV_PAGES_H_
#define MOEX_CACHE_KV_PAGES_H_

#include <atomic>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

namespace moex {

// Positions to a page: a page of one head's rows holds this many (a store whose row is
// itself a group of positions, like q4kivi's key groups of 32, takes one row a page).
inline constexpr int64_t kKvPageTokens = 32;

// The pages of one kind of store: rows of row_bytes, rows_per_page (a power of two) to a
// page, each row in `planes` parts (a key and a value) that a page holds plane after
// plane, so that a pass over the keys alone reads contiguous bytes.
class KvPagePool {
 public:
  // bytes_left: a byte budget shared with other pools (may be null: none); a new page
  // takes its bytes from it, Trim gives them back.
  KvPagePool(int64_t row_bytes, int rows_per_page, int planes = 1,
             std::atomic<int64_t>* bytes_left = nullptr)
      : row_bytes_(row_bytes),
        rows_per_page_(rows_per_page),
        planes_(planes),
        page_bytes_(row_bytes * rows_per_page * planes),
        bytes_left_(bytes_left) {}
  ~KvPagePool();
  KvPagePool(const KvPagePool&) = delete;
  KvPagePool& operator=(const KvPagePool&) = delete;

  // A page of page_bytes(), 64-byte aligned: one handed back earlier, or a new one; null
  // when the budget or the memory is out.
  uint8_t* Take();
  void Give(uint8_t* page);
  // Frees the pages nobody holds (their bytes go back to the budget).
  void Trim();

  int64_t row_bytes() const { return row_bytes_; }
  int rows_per_page() const { return rows_per_page_; }
  int planes() const { return planes_; }
  int64_t page_bytes() const { return page_bytes_; }
  // Pages allocated (held by rows or waiting in the pool), and bytes of them.
  int64_t pages() const;
  int64_t bytes() const { return pages() * page_bytes_; }

 private:
  const int64_t row_bytes_;
  const int rows_per_page_, planes_;
  const int64_t page_bytes_;
  std::atomic<int64_t>* const bytes_left_;
  mutable std::mutex mu_;
  std::vector<uint8_t*> free_;
  int64_t allocated_ = 0;
};

class KvRows {
 public:
  KvRows() = default;
  // Rows of the pool's shape, on its pages.
  explicit KvRows(KvPagePool* pool);
  ~KvRows() { Clear(); }
  KvRows(KvRows&& o) noexcept { *this = std::move(o); }
  KvRows& operator=(KvRows&& o) noexcept;
  KvRows(const KvRows&) = delete;
  KvRows& operator=(const KvRows&) = delete;

  int32_t size() const { return size_; }
  int64_t row_bytes() const { return row_bytes_; }
  int64_t pages() const { return static_cast<int64_t>(pages_.size()); }
  uint8_t* row(int32_t i, int plane = 0) {
    return pages_[i >> shift_] + plane * plane_bytes_ + (i & mask_) * row_bytes_;
  }
  const uint8_t* row(int32_t i, int plane = 0) const {
    return pages_[i >> shift_] + plane * plane_bytes_ + (i & mask_) * row_bytes_;
  }

  // The rows of one plane, addressed with everything held by value: a hot loop keeps it
  // in registers across calls that the compiler cannot see through, where row() would
  // reload the members after each.
  struct Plane {
    uint8_t* const* pages;
    int64_t row_bytes, offset;
    int shift;
    int32_t mask;
    const uint8_t* row(int32_t i) const {
      return pages[i >> shift] + offset + (i & mask) * row_bytes;
    }
  };
  Plane plane(int p) const {
    return Plane{pages_.data(), row_bytes_, p * plane_bytes_, shift_, mask_};
  }

  // A new row at the end (its bytes undefined), taking a page when the last one is full;
  // -1 when no page can be had (the rows are unchanged).
  int32_t Append();
  // Drops the last row (the undo of an Append).
  void PopBack();
  // Frees every row i with dead[i] != 0 (dead holds size() flags): rows from the end move
  // into the holes, emptied pages go back to the pool. Writes to *remap, for each old index,
  // its new one (-1 for a freed row).
  void Remove(std::span<const uint8_t> dead, std::vector<int32_t>* remap);
  // Hands every page back.
  void Clear();

 private:
  KvPagePool* pool_ = nullptr;
  int64_t row_bytes_ = 0;
  int shift_ = 0;  // log2 of the rows per page
  int32_t mask_ = 0;
  int planes_ = 1;
  int64_t plane_bytes_ = 0;  // a plane's rows in a page
  std::vector<uint8_t*> pages_;
  int32_t size_ = 0;
};

}  // namespace moex

#endif  // MOEX_CACHE_KV_PAGES_H_
