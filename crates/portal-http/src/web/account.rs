//! The dashboard and Payment History (filters, CSV).

use super::*;

// ---- Dashboard ----

pub(super) struct Alert {
    kind: &'static str,
    text: String,
    /// Where "Pay now" leads, for an alert that a payment resolves.
    pay: Option<String>,
}

pub(super) struct CoverageRow {
    plan: String,
    share: String,
    status: String,
}

pub(super) struct PaymentRow {
    id: PaymentId,
    date: String,
    amount: String,
    method: String,
    status: String,
    reference: String,
}

pub(super) struct DashboardView {
    name: String,
    account_number: String,
    has_due: bool,
    amount_due: String,
    due_date: Option<String>,
    /// The due date shown has passed.
    overdue: bool,
    credit: Option<String>,
    autopay_on: bool,
    reminders: bool,
    plan: bool,
    alerts: Vec<Alert>,
    coverage: Vec<CoverageRow>,
    payments: Vec<PaymentRow>,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub(super) struct DashboardPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    v: DashboardView,
}

pub(super) fn dashboard_view(s: &AppState, c: &Ctx, a: &Account) -> DashboardView {
    let today = s.portal.deps().clock.today();
    let summary = a.summary(&s.portal.config().delinquency, today);
    let mut alerts = Vec::new();
    let coverage = summary
        .enrollments
        .iter()
        .map(|e| {
            let status = match &e.status {
                CoverageStatus::PendingBinder { deadline, .. } => {
                    format!("{} {}", c.t.status_pending_binder, c.date(*deadline))
                }
                CoverageStatus::Cancelled { deadline } => {
                    alerts.push(Alert {
                        kind: "terminated",
                        text: format!("{} {}.", c.t.alert_cancelled, e.plan_name),
                        pay: None,
                    });
                    format!("{} {}", c.t.status_cancelled, c.date(*deadline))
                }
                CoverageStatus::Active => match e.paid_through {
                    Some(d) => {
                        format!("{} · {} {}", c.t.status_active, c.t.paid_through, c.date(d))
                    }
                    None => c.t.status_active.to_owned(),
                },
                CoverageStatus::InGrace { grace } => {
                    // The enrollment's own amount and deadline, as its notices say them.
                    let (amount, by) = e
                        .to_keep_coverage
                        .map_or((e.past_due, grace.grace_ends_on), |d| (d.amount, d.by));
                    alerts.push(Alert {
                        kind: "past-due",
                        text: format!(
                            "{} {} — {}. {} {}.",
                            c.t.alert_past_due,
                            e.plan_name,
                            c.money(amount),
                            c.t.alert_grace_ends,
                            c.date(by)
                        ),
                        pay: Some(format!("/pay?amount={amount}")),
                    });
                    format!(
                        "{} · {} {}",
                        c.t.status_in_grace,
                        c.t.alert_grace_ends,
                        c.date(grace.grace_ends_on)
                    )
                }
                CoverageStatus::Terminated { effective, .. } => {
                    // What restoring it still takes, while paying can restore it (once paid,
                    // the coverage machine has already restored it).
                    let (text, pay) = match e.to_keep_coverage {
                        None => (c.t.alert_terminated_closed.to_owned(), None),
                        Some(d) => (
                            format!(
                                "{} {} {} {}.",
                                c.t.alert_terminated,
                                c.money(d.amount),
                                c.t.alert_terminated_by,
                                c.date(d.by)
                            ),
                            Some(format!("/pay?amount={}", d.amount)),
                        ),
                    };
                    alerts.push(Alert {
                        kind: "terminated",
                        text,
                        pay,
                    });
                    format!("{} {}", c.t.status_terminated, c.date(*effective))
                }
            };
            CoverageRow {
                plan: e.plan_name.clone(),
                share: c.money(e.premium_share),
                status,
            }
        })
        .collect();
    // The latest payment's trouble, if its outcome is the latest word.
    let mut recent: Vec<&Payment> = a.ledger.payments.iter().collect();
    recent.sort_by_key(|p| std::cmp::Reverse(p.initiated_at));
    if let Some(p) = recent.first() {
        match p.status {
            PaymentStatus::Failed { reason } => alerts.push(Alert {
                kind: "declined",
                text: format!(
                    "{} {} ({})",
                    c.t.alert_declined,
                    locale::decline_reason(c.lang, reason),
                    p.reference
                ),
                pay: None,
            }),
            PaymentStatus::Returned { code } => alerts.push(Alert {
                kind: "returned",
                text: format!(
                    "{} {} ({})",
                    c.t.alert_returned,
                    locale::return_reason(c.lang, code),
                    p.reference
                ),
                pay: None,
            }),
            _ => {}
        }
    }
    for t in &summary.pending_transfers {
        alerts.push(Alert {
            kind: "pending",
            text: format!(
                "{} {} ({}, {})",
                c.t.alert_pending_transfer,
                t.expected_settlement.map(|d| c.date(d)).unwrap_or_default(),
                c.money(t.amount),
                t.reference
            ),
            pay: None,
        });
    }
    let payments = recent
        .iter()
        .take(5)
        .map(|p| PaymentRow {
            id: p.id,
            date: c.date(p.initiated_on),
            amount: c.money(p.amount),
            method: p.instrument.masked(),
            status: status_word(c, p),
            reference: p.reference.to_string(),
        })
        .collect();
    DashboardView {
        name: a.holder.first_name.to_string(),
        account_number: a.number.to_string(),
        has_due: summary.amount_due.cents() > 0,
        amount_due: c.money(summary.amount_due),
        due_date: summary.next_due_date.map(|d| c.date(d)),
        overdue: summary.next_due_date.is_some_and(|d| d < today),
        credit: (summary.credit.cents() > 0).then(|| c.money(summary.credit)),
        autopay_on: summary.autopay_active,
        reminders: a.reminders.due_date_reminders,
        plan: summary.active_plan.is_some(),
        alerts,
        coverage,
        payments,
    }
}

pub(super) async fn dashboard(State(s): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let (c, id) = match member_visit(&s, &headers, &uri).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let a = match s.portal.account(id).await {
        Ok(a) => a,
        Err(e) => return service_failure(&s, &c, &e),
    };
    let v = dashboard_view(&s, &c, &a);
    let html = DashboardPage {
        c: &c,
        title: c.t.dashboard,
        v,
    }
    .render();
    page(&s, &c, StatusCode::OK, html)
}

// ---- Payment History ----

#[derive(serde::Deserialize, Default)]
pub(super) struct HistoryQuery {
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// 1-based page of the list.
    page: Option<String>,
}

/// Payments per page of Payment History.
pub(super) const PAGE_SIZE: usize = 20;

pub(super) const STATUSES: [&str; 5] = ["succeeded", "pending", "failed", "returned", "refunded"];

/// The member's payments matching the filters, newest first; bad filters land on `c`.
pub(super) fn filtered<'a>(c: &mut Ctx, a: &'a Account, q: &HistoryQuery) -> Vec<&'a Payment> {
    let mut date = |field: &str, raw: &Option<String>| match raw.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(d) => match NaiveDate::parse_from_str(d, "%Y-%m-%d") {
            Ok(x) => Some(x),
            Err(_) => {
                c.fail(field, format!("{}: YYYY-MM-DD", c.t.date));
                None
            }
        },
    };
    let from = date("from", &q.from);
    let to = date("to", &q.to);
    let status = q
        .status
        .as_deref()
        .filter(|st| STATUSES.contains(st))
        .map(str::to_owned);
    let mut list: Vec<&Payment> = a
        .ledger
        .payments
        .iter()
        .filter(|p| status.as_deref().is_none_or(|st| p.status.name() == st))
        .filter(|p| {
            from.is_none_or(|f| p.initiated_on >= f) && to.is_none_or(|t| p.initiated_on <= t)
        })
        .collect();
    list.sort_by_key(|p| std::cmp::Reverse(p.initiated_at));
    list
}

#[derive(Template)]
#[template(path = "history.html")]
pub(super) struct HistoryPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    statuses: Vec<(&'static str, &'static str)>,
    status: String,
    from: String,
    to: String,
    rows: Vec<PaymentRow>,
    /// How many payments match the filters.
    total: usize,
    page: usize,
    pages: usize,
}

pub(super) async fn history(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let (mut c, id) = match member_visit(&s, &headers, &uri).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let a = match s.portal.account(id).await {
        Ok(a) => a,
        Err(e) => return service_failure(&s, &c, &e),
    };
    let list = filtered(&mut c, &a, &q);
    let total = list.len();
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    // A page past the end (the list shrank) shows the last one.
    let page = q
        .page
        .as_deref()
        .and_then(|p| p.trim().parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let rows = list
        .iter()
        .skip((page - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
        .map(|p| PaymentRow {
            id: p.id,
            date: c.date(p.initiated_on),
            amount: c.money(p.amount),
            method: p.instrument.masked(),
            status: status_word(&c, p),
            reference: p.reference.to_string(),
        })
        .collect();
    let t = c.t;
    let html = HistoryPage {
        c: &c,
        title: t.payment_history,
        statuses: vec![
            ("", t.all_statuses),
            ("succeeded", t.payment_status_succeeded),
            ("pending", t.payment_status_pending),
            ("failed", t.payment_status_failed),
            ("returned", t.payment_status_returned),
            ("refunded", t.payment_status_refunded),
        ],
        status: q.status.clone().unwrap_or_default(),
        from: q.from.clone().unwrap_or_default(),
        to: q.to.clone().unwrap_or_default(),
        rows,
        total,
        page,
        pages,
    }
    .render();
    form_page(&s, &c, html)
}

/// A CSV field, quoted when it needs to be; a leading formula character is defused so a
/// spreadsheet never runs it.
pub(super) fn csv_field(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@']) {
        format!("'{v}")
    } else {
        v.to_owned()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

pub(super) async fn history_csv(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let (mut c, id) = match member_visit(&s, &headers, &uri).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let a = match s.portal.account(id).await {
        Ok(a) => a,
        Err(e) => return service_failure(&s, &c, &e),
    };
    let list = filtered(&mut c, &a, &q);
    if let Some(e) = c.errors.first() {
        return (StatusCode::UNPROCESSABLE_ENTITY, e.message.clone()).into_response();
    }
    let mut out = String::from("date,reference,amount,method,status,expected_settlement\r\n");
    for p in list {
        let row = [
            p.initiated_on.to_string(),
            p.reference.to_string(),
            p.amount.to_string(),
            p.instrument.masked(),
            p.status.name().to_owned(),
            p.expected_settlement
                .map(|d| d.to_string())
                .unwrap_or_default(),
        ];
        let line: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"payment-history.csv\"",
            ),
        ],
        out,
    )
        .into_response()
}

// ---- Payment plan ----

#[derive(Template)]
#[template(path = "plan.html")]
pub(super) struct PlanPage<'a> {
    c: &'a Ctx,
    title: &'a str,
    notice: Option<&'a str>,
    total: String,
    /// (due date, amount, status)
    installments: Vec<(String, String, &'static str)>,
    past_due: Option<String>,
    choices: Vec<u32>,
}

fn plan_page(s: &AppState, c: &Ctx, a: &Account, notice: Option<&str>) -> Response {
    let today = s.portal.deps().clock.today();
    let (total, installments) = match a.active_plan() {
        Some(p) => (
            c.money(p.total),
            p.installments
                .iter()
                .filter_map(|b| a.ledger.bill(*b))
                .map(|b| {
                    let status = if b.open_amount().cents() == 0 {
                        c.t.installment_paid
                    } else {
                        c.t.installment_open
                    };
                    (c.date(b.due_date), c.money(b.amount), status)
                })
                .collect(),
        ),
        None => (String::new(), Vec::new()),
    };
    let past_due_cents: i64 = a
        .ledger
        .bills
        .iter()
        .filter(|b| {
            b.is_past_due(today)
                && !matches!(b.kind, portal_core::billing::BillKind::Installment { .. })
        })
        .map(|b| b.open_amount().cents())
        .sum();
    let html = PlanPage {
        c,
        title: c.t.plan_title,
        notice,
        total,
        installments,
        past_due: (past_due_cents > 0).then(|| c.money(Money::from_cents(past_due_cents))),
        choices: (2..=12).collect(),
    }
    .render();
    form_page(s, c, html)
}

#[derive(serde::Deserialize, Default)]
pub(super) struct PlanQuery {
    done: Option<String>,
}

pub(super) async fn plan(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<PlanQuery>, QueryRejection>,
) -> Response {
    let (c, id) = match member_visit(&s, &headers, &uri).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let notice = q.ok().and_then(|Query(q)| q.done).map(|_| c.t.plan_created);
    match s.portal.account(id).await {
        Ok(a) => plan_page(&s, &c, &a, notice),
        Err(e) => service_failure(&s, &c, &e),
    }
}

pub(super) async fn plan_submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let (mut c, form, id) = match member_posted(&s, &headers, &uri, form).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let n = form
        .get("installments")
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    match s
        .portal
        .set_up_payment_plan(id, n, None, portal_core::audit::Actor::Member)
        .await
    {
        Ok(_) => Redirect::to("/plan?done=1").into_response(),
        Err(ServiceError::Invalid(v)) => {
            c.fail_fields(&v.0, &[]);
            match s.portal.account(id).await {
                Ok(a) => plan_page(&s, &c, &a, None),
                Err(e) => service_failure(&s, &c, &e),
            }
        }
        Err(e) => service_failure(&s, &c, &e),
    }
}
