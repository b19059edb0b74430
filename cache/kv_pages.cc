#include "cache/kv_pages.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <new>
#include <utility>

namespace moex {

namespace {
constexpr std::align_val_t kPageAlign{64};
}  // namespace

KvPagePool::~KvPagePool() {
  // Every KvRows has handed its pages back by now (the cache destroys its heads first);
  // only the free list is left to release.
  Trim();
}

uint8_t* KvPagePool::Take() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!free_.empty()) {
      uint8_t* p = free_.back();
      free_.pop_back();
      return p;
    }
  }
  if (bytes_left_ != nullptr && bytes_left_->fetch_sub(page_bytes_) < page_bytes_) {
    bytes_left_->fetch_add(page_bytes_);
    return nullptr;
  }
  auto* p = static_cast<uint8_t*>(
      ::operator new(static_cast<size_t>(page_bytes_), kPageAlign, std::nothrow));
  if (p != nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    try {
      // Room on the free list for every page there is, so that Give, which runs in
      // destructors and moves, never allocates.
      if (free_.capacity() < static_cast<size_t>(allocated_ + 1)) {
        free_.reserve(std::max<size_t>(16, 2 * free_.capacity()));
      }
      ++allocated_;
      return p;
    } catch (const std::bad_alloc&) {
      ::operator delete(p, kPageAlign);
    }
  }
  if (bytes_left_ != nullptr) bytes_left_->fetch_add(page_bytes_);
  return nullptr;
}

void KvPagePool::Give(uint8_t* page) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(page);
}

void KvPagePool::Trim() {
  std::lock_guard<std::mutex> lock(mu_);
  for (uint8_t* p : free_) ::operator delete(p, kPageAlign);
  allocated_ -= static_cast<int64_t>(free_.size());
  if (bytes_left_ != nullptr)
    bytes_left_->fetch_add(static_cast<int64_t>(free_.size()) * page_bytes_);
  free_.clear();
}

int64_t KvPagePool::pages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocated_;
}

KvRows::KvRows(KvPagePool* pool)
    : pool_(pool),
      row_bytes_(pool->row_bytes()),
      shift_(std::countr_zero(static_cast<unsigned>(pool->rows_per_page()))),
      mask_(pool->rows_per_page() - 1),
      planes_(pool->planes()),
      plane_bytes_(pool->rows_per_page() * pool->row_bytes()) {}

KvRows& KvRows::operator=(KvRows&& o) noexcept {
  if (this != &o) {
    Clear();
    pool_ = o.pool_;
    row_bytes_ = o.row_bytes_;
    shift_ = o.shift_;
    mask_ = o.mask_;
    planes_ = o.planes_;
    plane_bytes_ = o.plane_bytes_;
    pages_ = std::move(o.pages_);
    size_ = std::exchange(o.size_, 0);
    o.pages_.clear();
  }
  return *this;
}

int32_t KvRows::Append() {
  if ((size_ & mask_) == 0 && size_ >> shift_ == static_cast<int32_t>(pages_.size())) {
    // May throw; then nothing is taken yet. Doubling: a long context adds pages often.
    if (pages_.size() == pages_.capacity()) pages_.reserve(std::max<size_t>(8, 2 * pages_.size()));
    uint8_t* page = pool_->Take();
    if (page == nullptr) return -1;
    pages_.push_back(page);
  }
  return size_++;
}

void KvRows::PopBack() {
  --size_;
  if (static_cast<size_t>((size_ + mask_) >> shift_) < pages_.size()) {
    pool_->Give(pages_.back());
    pages_.pop_back();
  }
}

void KvRows::Remove(std::span<const uint8_t> dead, std::vector<int32_t>* remap) {
  remap->resize(size_);
  int32_t live = 0;
  for (int32_t i = 0; i < size_; ++i) live += dead[i] == 0;
  // Holes below `live` take the live rows above it, both in ascending order; rows below
  // `live` that are alive stay where they are.
  int32_t hole = 0;
  for (int32_t i = 0; i < size_; ++i) {
    if (dead[i]) {
      (*remap)[i] = -1;
    } else if (i < live) {
      (*remap)[i] = i;
    } else {
      while (!dead[hole]) ++hole;
      for (int p = 0; p < planes_; ++p) {
        std::memcpy(row(hole, p), row(i, p), static_cast<size_t>(row_bytes_));
      }
      (*remap)[i] = hole++;
    }
  }
  size_ = live;
  const size_t keep = static_cast<size_t>((live + mask_) >> shift_);
  while (pages_.size() > keep) {
    pool_->Give(pages_.back());
    pages_.pop_back();
  }
}

void KvRows::Clear() {
  for (uint8_t* p : pages_) pool_->Give(p);
  pages_.clear();
  size_ = 0;
}

}  // namespace moex
