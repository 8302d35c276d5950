"""Every route of the edge, on one screen."""
from __future__ import annotations

from aiohttp import web

from edge import admin_api as admin
from edge import anthropic_api as anthropic
from edge import console_api as console
from edge import health, openapi, pages
from edge import media_api as media
from edge import money_api as money
from edge import openai_api as v1
from edge import operator_api as operator
from edge.state import CONFIG


def setup(app: web.Application) -> None:
    r = app.router
    # OpenAI-compatible API (DESIGN §4). /v1/v1/... and //v1/... reach these too (middleware.Router).
    r.add_post("/v1/chat/completions", v1.chat_completions)
    r.add_post("/v1/completions", v1.completions)
    r.add_post("/v1/embeddings", v1.embeddings)
    r.add_post("/v1/responses", v1.responses)
    r.add_get("/v1/responses/{id}", v1.get_response)
    r.add_delete("/v1/responses/{id}", v1.delete_response)
    r.add_get("/v1/responses/{id}/input_items", v1.list_input_items)
    r.add_post("/v1/responses/{id}/cancel", v1.cancel_response)  # a background response
    r.add_get("/v1/models", anthropic.list_models)  # Anthropic's shape when asked with anthropic-version
    r.add_get("/v1/models/{model:.+}", v1.get_model)
    # Anthropic's Messages API (Claude Code, the Anthropic SDKs; `?beta=true` changes nothing).
    r.add_post("/v1/messages", anthropic.messages)
    r.add_post("/v1/messages/count_tokens", anthropic.count_tokens)
    # Images, audio and moderations (OpenAI-compatible channels), priced per unit or token.
    r.add_post("/v1/images/generations", media.images_generations)
    r.add_post("/v1/images/edits", media.images_edits)              # multipart
    r.add_post("/v1/images/variations", media.images_variations)    # multipart
    r.add_post("/v1/audio/speech", media.audio_speech)              # audio bytes streamed back
    r.add_post("/v1/audio/transcriptions", media.audio_transcriptions)  # multipart
    r.add_post("/v1/audio/translations", media.audio_translations)      # multipart
    r.add_post("/v1/moderations", media.moderations)
    r.add_get("/v1/dashboard/billing/subscription", v1.billing_subscription)
    r.add_get("/v1/dashboard/billing/usage", v1.billing_usage)
    r.add_get("/dashboard/billing/subscription", v1.billing_subscription)
    r.add_get("/dashboard/billing/usage", v1.billing_usage)

    # Admin API (DESIGN §5), admin key only.
    r.add_post("/admin/v1/users", admin.create_user)
    r.add_get("/admin/v1/users/{id}", admin.get_user)
    r.add_post("/admin/v1/users/{id}/topups", admin.top_up)
    r.add_post("/admin/v1/users/{id}/keys", admin.create_key)
    r.add_get("/admin/v1/users/{id}/keys", admin.list_keys)
    r.add_delete("/admin/v1/keys/{id}", admin.revoke_key)
    r.add_post("/admin/v1/channels", admin.create_channel)
    r.add_get("/admin/v1/channels", admin.list_channels)
    r.add_patch("/admin/v1/channels/{id}", admin.update_channel)
    r.add_delete("/admin/v1/channels/{id}", admin.delete_channel)
    r.add_post("/admin/v1/channels/{id}/test", admin.test_channel)
    r.add_put("/admin/v1/aliases/{name:.+}", admin.set_alias)
    r.add_get("/admin/v1/aliases", admin.list_aliases)
    r.add_delete("/admin/v1/aliases/{name:.+}", admin.delete_alias)
    r.add_put("/admin/v1/prices/{model:.+}", admin.set_price)
    r.add_get("/admin/v1/prices", admin.list_prices)
    r.add_get("/admin/v1/usage", admin.usage)
    r.add_post("/admin/v1/redeem-codes", admin.create_redeem_codes)
    r.add_get("/admin/v1/ledger/verify", admin.verify_ledger)
    r.add_get("/admin/v1/runtime", admin.runtime)
    r.add_get("/admin/v1/audit", admin.audit_log)

    # Admin API for the operator pages (same guard; an operator's session also passes).
    r.add_get("/admin/v1/users", operator.search_users)
    r.add_patch("/admin/v1/users/{id}", operator.update_user)
    r.add_put("/admin/v1/users/{id}/role", operator.set_role)
    r.add_get("/admin/v1/stats", operator.stats)
    r.add_put("/admin/v1/notice", operator.set_notice)

    # The signed-in user's API (console and chat page), session cookie + CSRF token.
    r.add_post("/api/register", console.register)
    r.add_post("/api/login", console.login)
    r.add_post("/api/logout", console.logout)
    r.add_post("/api/password/reset", console.request_password_reset)
    r.add_post("/api/password/reset/confirm", console.confirm_password_reset)
    r.add_post("/api/password/change", console.change_password)
    r.add_post("/api/email/verify", console.verify_email)
    r.add_post("/api/email/verify/resend", console.resend_verification)
    r.add_get("/api/alerts", console.get_alert)
    r.add_put("/api/alerts", console.set_alert)
    r.add_get("/api/notice", console.notice)
    r.add_get("/api/me", console.me)
    r.add_get("/api/keys", console.list_keys)
    r.add_post("/api/keys", console.create_key)
    r.add_delete("/api/keys/{id}", console.revoke_key)
    r.add_get("/api/usage", console.usage)
    r.add_get("/api/spend", console.spend)
    r.add_post("/api/redeem", console.redeem)
    r.add_get("/api/models", console.models)
    r.add_post("/api/chat/completions", console.chat_completions)

    # Money in: public prices, the user's payment orders, the providers' notifications.
    r.add_get("/api/pricing", money.pricing)
    r.add_post("/api/payments", money.create_payment)
    r.add_get("/api/payments", money.list_payments)
    r.add_get("/api/payments/{id}", money.get_payment)
    r.add_get("/api/payments/{id}/qr.svg", money.payment_qr)
    r.add_post("/api/payments/{id}/pay", money.pay_demo)  # the demo provider's Pay button
    r.add_get("/api/invite", money.invite)
    r.add_post("/payments/alipay/notify", money.alipay_notify)
    r.add_get("/payments/alipay/return", money.alipay_return)
    r.add_post("/payments/stripe/webhook", money.stripe_webhook)
    r.add_get("/admin/v1/orders", operator.list_orders)
    r.add_patch("/admin/v1/orders/{id}", operator.review_order)
    r.add_get("/admin/v1/payment-notifications", operator.list_notifications)

    # Pages: /chat, /console, /ops and their static files.
    pages.setup(app)

    # Operations.
    r.add_get("/healthz", health.healthz)
    r.add_get("/readyz", health.readyz)
    if not app[CONFIG].telemetry.metrics_port:  # else on CHATKORE_METRICS_PORT (edge/app.py)
        r.add_get("/metrics", health.metrics_page)
    r.add_get("/openapi.json", openapi.document)
