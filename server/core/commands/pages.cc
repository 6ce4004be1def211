// Page commands: AllocatePages (cleared before the reply), FreePages and ForkPages (references to
// this session or, through a fork grant, to another session attached to the pool).
#include <utility>
#include <vector>

#include "server/core/core_state.h"
#include "spdlog/spdlog.h"

namespace attnd::server {

absl::StatusOr<v1::AllocatePagesResponse> Core::AllocatePages(
    SessionRef session_ref, const v1::AllocatePagesRequest& request) {
  State& st = *state_;
  return st.WithSession(
      session_ref, [&](Session& session) -> absl::StatusOr<v1::AllocatePagesResponse> {
        auto pool = st.AttachedPool(session, request.pool_id());
        if (!pool.ok()) return pool.status();
        if (auto s = ValidatePageCount(request.count()); !s.ok()) return s;
        if (auto s = CheckReplyFits(st.ScopeFor(session),
                                    absl::StrCat("AllocatePages count=", request.count()),
                                    kVarint32Bytes * static_cast<uint64_t>(request.count()),
                                    "allocate in smaller batches");
            !s.ok()) {
          return s;
        }
        Pool& p = **pool;
        SessionUsage& usage = *session.usage;
        if (auto s = st.ReservePageReferences(usage, request.count(), "this session"); !s.ok()) {
          return s;
        }
        v1::AllocatePagesResponse response;
        {
          absl::MutexLock lock(&p.mu);
          PoolAttachment& mine = State::AttachmentOf(p, session);
          absl::Status sized = p.SizeLedgers(mine, st.host);
          auto pages = sized.ok() ? p.allocator.Allocate(request.count(), mine.held, p.name())
                                  : absl::StatusOr<std::vector<int32_t>>(sized);
          if (!pages.ok()) {
            usage.page_references.fetch_sub(request.count());
            return pages.status();
          }
          response.mutable_page_ids()->Add(pages->begin(), pages->end());
          response.set_free_pages(p.allocator.free_pages());
        }
        // The new pages are this session's alone (only it could share them, and it is busy here),
        // so they are cleared outside the pool's lock, and finished before the reply: nobody reads
        // a page before its previous owner's K/V is gone.
        absl::Status cleared = [&]() -> absl::Status {
          auto stream = st.SessionStream(session);
          if (!stream.ok()) return stream.status();
          if (auto s = p.ClearPages(response.page_ids(), *st.backend, *stream); !s.ok()) return s;
          return st.backend->Synchronize(*stream);
        }();
        if (!cleared.ok()) {
          absl::MutexLock lock(&p.mu);
          std::vector<int32_t> pages(response.page_ids().begin(), response.page_ids().end());
          (void)p.allocator.Release(pages, State::AttachmentOf(p, session).held);
          usage.page_references.fetch_sub(request.count());
          return absl::Status(cleared.code(), absl::StrCat("clearing the allocated pages failed: ",
                                                           cleared.message()));
        }
        spdlog::debug("session {} allocated {} page(s) of pool '{}'", session.tag, request.count(),
                      p.name());
        return response;
      });
}

absl::StatusOr<v1::FreePagesResponse> Core::FreePages(SessionRef session_ref,
                                                      const v1::FreePagesRequest& request) {
  State& st = *state_;
  return st.WithSession(
      session_ref, [&](Session& session) -> absl::StatusOr<v1::FreePagesResponse> {
        auto pool = st.AttachedPool(session, request.pool_id());
        if (!pool.ok()) return pool.status();
        Pool& p = **pool;
        const absl::Span<const int32_t> ids(request.page_ids().data(), request.page_ids_size());
        if (auto s = ValidatePageIds(ids, "page_ids", p.geometry().num_pages, p.name()); !s.ok()) {
          return s;
        }
        absl::MutexLock lock(&p.mu);
        PoolAttachment& mine = State::AttachmentOf(p, session);
        if (auto s = CheckPagesHeld(ids, "page_ids", mine.held, p.name()); !s.ok()) return s;
        if (auto s = p.allocator.Release(ids, mine.held); !s.ok()) return s;
        session.usage->page_references.fetch_sub(static_cast<int64_t>(ids.size()));
        v1::FreePagesResponse response;
        response.set_free_pages(p.allocator.free_pages());
        return response;
      });
}

absl::StatusOr<v1::ForkPagesResponse> Core::ForkPages(SessionRef session_ref,
                                                      const v1::ForkPagesRequest& request) {
  State& st = *state_;
  return st.WithSession(
      session_ref, [&](Session& session) -> absl::StatusOr<v1::ForkPagesResponse> {
        auto pool = st.AttachedPool(session, request.pool_id());
        if (!pool.ok()) return pool.status();
        Pool& p = **pool;
        const absl::Span<const int32_t> ids(request.page_ids().data(), request.page_ids_size());
        if (auto s = ValidatePageIds(ids, "page_ids", p.geometry().num_pages, p.name()); !s.ok()) {
          return s;
        }
        if (!request.target_session_id().empty() &&
            !ConstantTimeEquals(request.target_session_id(), session.id)) {
          return absl::FailedPreconditionError(
              "target_session_id names another session: references go to another session only "
              "through its fork grant (set target_grant to the receiver's PoolInfo.fork_grant)");
        }
        if (auto s = CheckReplyFits(st.ScopeFor(session),
                                    absl::StrCat("ForkPages of ", ids.size(), " pages"),
                                    kVarint32Bytes * ids.size(), "fork in smaller batches");
            !s.ok()) {
          return s;
        }
        absl::MutexLock lock(&p.mu);
        PoolAttachment& mine = State::AttachmentOf(p, session);
        if (auto s = CheckPagesHeld(ids, "page_ids", mine.held, p.name()); !s.ok()) return s;
        PoolAttachment* target = &mine;
        if (!request.target_grant().empty()) {
          target = p.FindByGrant(request.target_grant(), nullptr);
          if (target == nullptr) {
            return absl::FailedPreconditionError(
                absl::StrCat("target_grant is not the fork grant of a session attached to pool '",
                             p.name(), "' (grants end when their session detaches)"));
          }
        }
        const bool to_self = target == &mine;
        if (auto s = st.ReservePageReferences(*target->usage, static_cast<int64_t>(ids.size()),
                                              to_self ? "this session" : "the receiving session");
            !s.ok()) {
          return s;
        }
        absl::Status added = p.SizeLedgers(*target, st.host);
        if (added.ok()) added = p.allocator.AddReferences(ids, target->held);
        if (!added.ok()) {
          target->usage->page_references.fetch_sub(static_cast<int64_t>(ids.size()));
          return added;
        }
        v1::ForkPagesResponse response;
        for (const int32_t page : ids) response.add_refcounts(p.allocator.refcount(page));
        return response;
      });
}

}  // namespace attnd::server
