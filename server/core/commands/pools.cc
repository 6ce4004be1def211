// Pool commands: CreatePool (geometry, host and pool budgets), AttachPool (by name and attach
// token), DescribePool and DeletePool (detaches this session; the last one frees the pool).
#include <utility>

#include "server/core/core_state.h"
#include "spdlog/spdlog.h"

namespace attnd::server {

absl::StatusOr<v1::CreatePoolResponse> Core::CreatePool(SessionRef session_ref,
                                                        const v1::CreatePoolRequest& request) {
  State& st = *state_;
  return st.WithSession(
      session_ref, [&](Session& session) -> absl::StatusOr<v1::CreatePoolResponse> {
        auto geometry = ValidateCreatePool(request, st.backend->info());
        if (!geometry.ok()) return geometry.status();
        auto bookkeeping =
            st.host.Charge(session.usage, Pool::BookkeepingBytes(*geometry),
                           absl::StrCat("the page bookkeeping of pool '", request.name(), "' (",
                                        geometry->num_pages, " pages)"));
        if (!bookkeeping.ok()) return bookkeeping.status();
        if (auto s = st.pools.Reserve(request.name(), geometry->total_bytes); !s.ok()) return s;
        auto pool = Pool::Create(NewRandomId("p-"), request.name(), *geometry, *st.backend,
                                 session.owner.principal, st.options.max_references_per_page,
                                 *std::move(bookkeeping));
        if (!pool.ok()) {
          st.pools.CancelReservation(request.name(), geometry->total_bytes);
          return pool.status();
        }
        {
          absl::MutexLock lock(&(*pool)->mu);
          (*pool)->Attach(session.id, session.usage);
        }
        st.pools.Insert(*pool);
        session.pools[(*pool)->id()] = *pool;
        spdlog::info(
            "pool '{}' ({}) created by session {}: {} layers x {} pages x {} tokens, "
            "{} kv heads, head_dim {}, {}, {} bytes",
            (*pool)->name(), (*pool)->id(), session.tag, geometry->num_layers, geometry->num_pages,
            geometry->page_size, geometry->num_kv_heads, geometry->head_dim,
            kernels::DTypeName(geometry->kv_dtype), geometry->total_bytes);
        v1::CreatePoolResponse response;
        *response.mutable_pool() = State::InfoFor(**pool, session);
        return response;
      });
}

absl::StatusOr<v1::AttachPoolResponse> Core::AttachPool(SessionRef session_ref,
                                                        const v1::AttachPoolRequest& request) {
  State& st = *state_;
  return st.WithSession(
      session_ref, [&](Session& session) -> absl::StatusOr<v1::AttachPoolResponse> {
        if (auto s = ValidatePoolName(request.name()); !s.ok()) return s;
        auto pool = st.pools.AttachByName(request.name(), session.id, session.usage,
                                          session.owner.principal, request.attach_token());
        if (!pool.ok()) return pool.status();
        session.pools[(*pool)->id()] = *pool;
        spdlog::info("session {} attached to pool '{}' ({})", session.tag, (*pool)->name(),
                     (*pool)->id());
        v1::AttachPoolResponse response;
        *response.mutable_pool() = State::InfoFor(**pool, session);
        return response;
      });
}

absl::StatusOr<v1::DescribePoolResponse> Core::DescribePool(
    SessionRef session_ref, const v1::DescribePoolRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref,
                        [&](Session& session) -> absl::StatusOr<v1::DescribePoolResponse> {
                          auto pool = st.AttachedPool(session, request.pool_id());
                          if (!pool.ok()) return pool.status();
                          v1::DescribePoolResponse response;
                          *response.mutable_pool() = State::InfoFor(**pool, session);
                          return response;
                        });
}

absl::StatusOr<v1::DeletePoolResponse> Core::DeletePool(SessionRef session_ref,
                                                        const v1::DeletePoolRequest& request) {
  State& st = *state_;
  return st.WithSession(session_ref,
                        [&](Session& session) -> absl::StatusOr<v1::DeletePoolResponse> {
                          auto pool = st.AttachedPool(session, request.pool_id());
                          if (!pool.ok()) return pool.status();
                          spdlog::info("session {} detaches from pool '{}' ({})", session.tag,
                                       (*pool)->name(), (*pool)->id());
                          st.Detach(session, *pool);
                          return v1::DeletePoolResponse();
                        });
}

}  // namespace attnd::server
