//! What each notice says, in English and Spanish. Each notice's content is written once as
//! structure (subject, paragraphs, details, one action) and rendered to plain text and HTML, so
//! both parts always say the same. Every language covers every notice body: a missing one does
//! not compile.

use chrono::{DateTime, Utc};
use portal_core::enrollment::TerminationReason;
use portal_core::identity::Language;
pub use portal_core::locale::money;
use portal_core::locale::{
    coverage_month as month, date, decline_reason as decline, return_reason as returned,
};
use portal_core::notice::{AutopayFailure, Notice, NoticeBody, NoticeKind};

/// Who the emails come from and how members reach support.
#[derive(Debug, Clone)]
pub struct Branding {
    /// Shown in subjects and signatures.
    pub portal_name: String,
    /// Base URL of the portal, without a trailing slash.
    pub portal_url: String,
    /// Support phone number.
    pub support_phone: String,
    /// Support email address.
    pub support_email: String,
}

impl Default for Branding {
    fn default() -> Self {
        Self {
            portal_name: "Health Connector Payment Portal".into(),
            portal_url: "http://127.0.0.1:8080".into(),
            support_phone: "1-877-623-6765".into(),
            support_email: "support@health-connector.example".into(),
        }
    }
}

/// A rendered notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Subject line.
    pub subject: String,
    /// The text/plain part.
    pub text: String,
    /// The text/html part.
    pub html: String,
}

struct Content {
    subject: String,
    paragraphs: Vec<String>,
    details: Vec<(String, String)>,
    action: Option<(String, String)>,
}

fn time(lang: Language, t: DateTime<Utc>) -> String {
    format!("{} {} UTC", date(lang, t.date_naive()), t.format("%H:%M"))
}

fn content(kind: NoticeKind, body: &NoticeBody, lang: Language, b: &Branding) -> Content {
    match lang {
        Language::En => english(kind, body, b),
        Language::Es => spanish(kind, body, b),
    }
}

fn english(kind: NoticeKind, body: &NoticeBody, b: &Branding) -> Content {
    let l = Language::En;
    let url = &b.portal_url;
    let pay = Some(("Make a Payment".to_owned(), format!("{url}/pay")));
    let c = |subject: String,
             paragraphs: Vec<String>,
             details: Vec<(&str, String)>,
             action: Option<(String, String)>| Content {
        subject,
        paragraphs,
        details: details
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        action,
    };
    match body {
        NoticeBody::EmailVerification { code, expires_at } => c(
            "Confirm your email address".into(),
            vec![
                format!("Enter this code to finish creating your {} account: {code}", b.portal_name),
                format!("The code works until {}.", time(l, *expires_at)),
                "If you did not start creating an account, you can ignore this email.".into(),
            ],
            vec![("Verification code", code.clone())],
            None,
        ),
        NoticeBody::AccountCreated { username } => c(
            "Your payment portal account is ready".into(),
            vec!["Your account is set up. You can now see what is due, pay your premium, set up automatic payments and view your payment history.".into()],
            vec![("Username", username.clone())],
            Some(("Log in".into(), format!("{url}/login"))),
        ),
        NoticeBody::PaymentConfirmation { reference, amount, method, paid_on, settles_by } => match settles_by {
            Some(settles) => c(
                format!("Bank transfer received and processing — reference {reference}"),
                vec![
                    format!("We received your bank transfer of {}. It takes a few business days to clear; we expect it by {}.", money(*amount), date(l, *settles)),
                    format!("Your payment counts as on time as of {}, the day you made it. Save this reference number for your records.", date(l, *paid_on)),
                ],
                vec![("Reference number", reference.clone()), ("Amount", money(*amount)), ("Payment method", method.clone()), ("Date paid", date(l, *paid_on)), ("Expected to clear", date(l, *settles))],
                Some(("View payment history".into(), format!("{url}/payments"))),
            ),
            None => c(
                format!("Payment received — reference {reference}"),
                vec![format!("Thank you. We received your payment of {}. Save this reference number for your records.", money(*amount))],
                vec![("Reference number", reference.clone()), ("Amount", money(*amount)), ("Payment method", method.clone()), ("Date paid", date(l, *paid_on))],
                Some(("View payment history".into(), format!("{url}/payments"))),
            ),
        },
        NoticeBody::PaymentFailed { reference, amount, method, reason } => c(
            format!("Your payment of {} did not go through", money(*amount)),
            vec![decline(l, *reason).to_owned(), "Nothing was charged and your bill is still open. Please pay with another method or try again.".into()],
            vec![("Reference number", reference.clone()), ("Amount", money(*amount)), ("Payment method", method.clone())],
            pay,
        ),
        NoticeBody::BankTransferReturned { reference, amount, method, code, amount_due } => c(
            "Your bank returned your payment".into(),
            vec![returned(l, *code), format!("The payment was taken off your account, so {} is due now. Please pay with another method.", money(*amount_due))],
            vec![("Reference number", reference.clone()), ("Amount returned", money(*amount)), ("Payment method", method.clone()), ("Amount due now", money(*amount_due))],
            pay,
        ),
        NoticeBody::BillIssued { coverage_month, plan_name, amount, due_date, binder, autopay_on } => {
            let mut p = vec![format!("Your premium bill for {} coverage under {plan_name} is {}, due {}.", month(l, *coverage_month), money(*amount), date(l, *due_date))];
            if *binder {
                p.push("This is your first (binder) payment: your coverage starts once it is paid.".into());
            }
            match autopay_on {
                Some(d) => p.push(format!("Your automatic payment will pay it on {}. You do not need to do anything.", date(l, *d))),
                None => p.push("Pay by the due date to keep your coverage.".into()),
            }
            c(
                format!("Your {} premium bill: {} due {}", month(l, *coverage_month), money(*amount), date(l, *due_date)),
                p,
                vec![("Coverage month", month(l, *coverage_month)), ("Plan", plan_name.clone()), ("Amount due", money(*amount)), ("Due date", date(l, *due_date))],
                if autopay_on.is_some() { None } else { pay },
            )
        }
        NoticeBody::BillRepriced { coverage_month, old_amount, new_amount, due_date } => c(
            format!("Your {} bill has changed", month(l, *coverage_month)),
            vec![format!("Because your premium tax credit changed, your bill for {} is now {} instead of {}.", month(l, *coverage_month), money(*new_amount), money(*old_amount))],
            vec![("New amount", money(*new_amount)), ("Previous amount", money(*old_amount)), ("Due date", date(l, *due_date))],
            Some(("View your bills".into(), format!("{url}/dashboard"))),
        ),
        NoticeBody::DueDateReminder { amount, due_date, days_before } => c(
            format!("Reminder: {} is due {}", money(*amount), date(l, *due_date)),
            vec![format!("Your premium payment of {} is due in {days_before} days, on {}. Pay by then to keep your coverage.", money(*amount), date(l, *due_date))],
            vec![("Amount due", money(*amount)), ("Due date", date(l, *due_date))],
            pay,
        ),
        NoticeBody::AutopayPreDebit { amount, debit_date, method } => c(
            format!("Upcoming automatic payment of {} on {}", money(*amount), date(l, *debit_date)),
            vec![format!("On {} we will take {} from your {method} for your premium. To change or pause it, go to Settings, Automatic Payments before then.", date(l, *debit_date), money(*amount))],
            vec![("Amount", money(*amount)), ("Date", date(l, *debit_date)), ("Payment method", method.clone())],
            Some(("Automatic Payments".into(), format!("{url}/settings/autopay"))),
        ),
        NoticeBody::AutopayFailed { amount, method, reason, retry_on, suspended } => {
            let why = match reason {
                AutopayFailure::Declined { reason } => decline(l, *reason).to_owned(),
                AutopayFailure::Returned { code } => returned(l, *code),
                AutopayFailure::MethodUnavailable => "The payment method is no longer available (it was removed or has expired).".to_owned(),
            };
            let mut p = vec![format!("Your automatic payment of {} did not go through.", money(*amount)), why];
            if *suspended {
                p.push("Automatic payments are paused after two failures in a row. Please pay now and update your payment method under Settings, Automatic Payments.".into());
            } else if let Some(d) = retry_on {
                p.push(format!("We will try again on {}. To avoid another failure, check the account or update your payment method.", date(l, *d)));
            }
            c("Your automatic payment did not go through".into(), p, vec![("Amount", money(*amount)), ("Payment method", method.clone())], pay)
        }
        NoticeBody::PastDue { plan_name, amount, due_date, grace_ends_on } => c(
            format!("Your {plan_name} premium is past due"),
            vec![
                format!("We did not receive your {plan_name} payment due {}. {} is now past due on this plan.", date(l, *due_date), money(*amount)),
                format!("Your grace period ends {}. Pay the full amount by then to keep your coverage. If you cannot pay it all at once, you can request a payment plan.", date(l, *grace_ends_on)),
            ],
            vec![("Plan", plan_name.clone()), ("Amount past due", money(*amount)), ("Missed due date", date(l, *due_date)), ("Grace period ends", date(l, *grace_ends_on))],
            pay,
        ),
        NoticeBody::TerminationWarning { plan_name, amount, grace_ends_on, termination_effective } => {
            let second = kind == NoticeKind::SecondTerminationWarning;
            c(
                if second { format!("Final notice: your {plan_name} coverage will end unless you pay") } else { format!("Your {plan_name} coverage will end unless you pay") },
                vec![
                    format!("You owe {} on {plan_name}. If it is not paid by {}, this coverage will be terminated for non-payment, effective {}.", money(*amount), date(l, *grace_ends_on), date(l, *termination_effective)),
                    "Pay now, or contact us to set up a payment plan.".into(),
                ],
                vec![("Plan", plan_name.clone()), ("Amount due", money(*amount)), ("Pay by", date(l, *grace_ends_on)), ("Coverage would end on", date(l, *termination_effective))],
                pay,
            )
        }
        NoticeBody::CoverageTerminated { plan_name, effective, reason, reinstatable_until, amount_to_reinstate } => c(
            format!("Your {plan_name} coverage has ended"),
            vec![
                match reason {
                    TerminationReason::NonPayment => format!("Your coverage ended on {} because premiums were not paid by the end of the grace period.", date(l, *effective)),
                },
                format!("You can restore it by paying {} by {}.", money(*amount_to_reinstate), date(l, *reinstatable_until)),
            ],
            vec![("Plan", plan_name.clone()), ("Last day of coverage", date(l, *effective)), ("Amount to restore coverage", money(*amount_to_reinstate)), ("Restore by", date(l, *reinstatable_until))],
            pay,
        ),
        NoticeBody::CoverageCancelled { plan_name, deadline } => c(
            format!("Your {plan_name} coverage did not start"),
            vec![
                format!("We did not receive your first payment for {plan_name} by {}, so this coverage did not start and has been cancelled. Nothing is owed for it.", date(l, *deadline)),
                "Any money you paid toward it stays on your account as credit. To get coverage, contact the Health Connector about enrolling again.".into(),
            ],
            vec![("Plan", plan_name.clone()), ("First payment was due by", date(l, *deadline))],
            Some(("View your account".into(), format!("{url}/dashboard"))),
        ),
        NoticeBody::CoverageReinstated { plan_name } => c(
            format!("Your {plan_name} coverage is restored"),
            vec!["We received your payment and your coverage is active again, without a gap.".into()],
            vec![("Plan", plan_name.clone())],
            Some(("View your account".into(), format!("{url}/dashboard"))),
        ),
        NoticeBody::PaymentPlanSetUp { total, installments } => Content {
            subject: "Your payment plan is set up".into(),
            paragraphs: vec![format!("Your past-due balance of {} is split into {} monthly installments. Paying each one on time keeps your coverage; a missed installment ends the plan.", money(*total), installments.len())],
            details: installments.iter().enumerate().map(|(i, (a, d))| (format!("Installment {}", i + 1), format!("{} due {}", money(*a), date(l, *d)))).collect(),
            action: pay,
        },
        NoticeBody::PasswordReset { token, expires_at } => c(
            "Reset your password".into(),
            vec![
                format!("Someone asked to reset the password of your {} account. Use the link below by {}; it works once.", b.portal_name, time(l, *expires_at)),
                "If it was not you, ignore this email: your password stays the same.".into(),
            ],
            vec![],
            Some(("Set a new password".into(), format!("{url}/reset-password?token={token}"))),
        ),
        NoticeBody::PasswordChanged { changed_at } => c(
            "Your password was changed".into(),
            vec![format!("The password of your account was changed on {}. You were logged out everywhere.", time(l, *changed_at)), format!("If you did not do this, call us right away at {}.", b.support_phone)],
            vec![],
            Some(("Log in".into(), format!("{url}/login"))),
        ),
        NoticeBody::RefundIssued { reference, amount, method } => c(
            format!("Refund of {} issued", money(*amount)),
            vec![format!("We refunded {} to your {method}. It can take 5 to 10 business days to appear.", money(*amount))],
            vec![("Reference number", reference.clone()), ("Refund amount", money(*amount)), ("Refunded to", method.clone())],
            None,
        ),
    }
}

fn spanish(kind: NoticeKind, body: &NoticeBody, b: &Branding) -> Content {
    let l = Language::Es;
    let url = &b.portal_url;
    let pay = Some(("Hacer un pago".to_owned(), format!("{url}/pay?lang=es")));
    let c = |subject: String,
             paragraphs: Vec<String>,
             details: Vec<(&str, String)>,
             action: Option<(String, String)>| Content {
        subject,
        paragraphs,
        details: details
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        action,
    };
    match body {
        NoticeBody::EmailVerification { code, expires_at } => c(
            "Confirme su correo electrónico".into(),
            vec![
                format!("Ingrese este código para terminar de crear su cuenta del {}: {code}", b.portal_name),
                format!("El código es válido hasta el {}.", time(l, *expires_at)),
                "Si usted no comenzó a crear una cuenta, puede ignorar este mensaje.".into(),
            ],
            vec![("Código de verificación", code.clone())],
            None,
        ),
        NoticeBody::AccountCreated { username } => c(
            "Su cuenta del portal de pagos está lista".into(),
            vec!["Su cuenta está creada. Ahora puede ver lo que debe, pagar su prima, configurar pagos automáticos y consultar su historial de pagos.".into()],
            vec![("Nombre de usuario", username.clone())],
            Some(("Iniciar sesión".into(), format!("{url}/login?lang=es"))),
        ),
        NoticeBody::PaymentConfirmation { reference, amount, method, paid_on, settles_by } => match settles_by {
            Some(settles) => c(
                format!("Transferencia bancaria recibida y en proceso — referencia {reference}"),
                vec![
                    format!("Recibimos su transferencia bancaria de {}. Tarda algunos días hábiles en acreditarse; esperamos que se acredite a más tardar el {}.", money(*amount), date(l, *settles)),
                    format!("Su pago cuenta como puntual desde el {}, el día en que lo hizo. Guarde este número de referencia.", date(l, *paid_on)),
                ],
                vec![("Número de referencia", reference.clone()), ("Monto", money(*amount)), ("Método de pago", method.clone()), ("Fecha de pago", date(l, *paid_on)), ("Acreditación prevista", date(l, *settles))],
                Some(("Ver historial de pagos".into(), format!("{url}/payments?lang=es"))),
            ),
            None => c(
                format!("Pago recibido — referencia {reference}"),
                vec![format!("Gracias. Recibimos su pago de {}. Guarde este número de referencia.", money(*amount))],
                vec![("Número de referencia", reference.clone()), ("Monto", money(*amount)), ("Método de pago", method.clone()), ("Fecha de pago", date(l, *paid_on))],
                Some(("Ver historial de pagos".into(), format!("{url}/payments?lang=es"))),
            ),
        },
        NoticeBody::PaymentFailed { reference, amount, method, reason } => c(
            format!("Su pago de {} no se procesó", money(*amount)),
            vec![decline(l, *reason).to_owned(), "No se hizo ningún cargo y su factura sigue pendiente. Pague con otro método o intente de nuevo.".into()],
            vec![("Número de referencia", reference.clone()), ("Monto", money(*amount)), ("Método de pago", method.clone())],
            pay,
        ),
        NoticeBody::BankTransferReturned { reference, amount, method, code, amount_due } => c(
            "Su banco devolvió su pago".into(),
            vec![returned(l, *code), format!("El pago se retiró de su cuenta, por lo que ahora debe {}. Pague con otro método.", money(*amount_due))],
            vec![("Número de referencia", reference.clone()), ("Monto devuelto", money(*amount)), ("Método de pago", method.clone()), ("Monto adeudado", money(*amount_due))],
            pay,
        ),
        NoticeBody::BillIssued { coverage_month, plan_name, amount, due_date, binder, autopay_on } => {
            let mut p = vec![format!("Su factura de la prima por la cobertura de {} del plan {plan_name} es de {}, con vencimiento el {}.", month(l, *coverage_month), money(*amount), date(l, *due_date))];
            if *binder {
                p.push("Este es su primer pago (pago inicial): su cobertura comienza cuando se paga.".into());
            }
            match autopay_on {
                Some(d) => p.push(format!("Su pago automático la pagará el {}. No necesita hacer nada.", date(l, *d))),
                None => p.push("Pague antes de la fecha de vencimiento para mantener su cobertura.".into()),
            }
            c(
                format!("Su factura de {}: {} con vencimiento el {}", month(l, *coverage_month), money(*amount), date(l, *due_date)),
                p,
                vec![("Mes de cobertura", month(l, *coverage_month)), ("Plan", plan_name.clone()), ("Monto adeudado", money(*amount)), ("Fecha de vencimiento", date(l, *due_date))],
                if autopay_on.is_some() { None } else { pay },
            )
        }
        NoticeBody::BillRepriced { coverage_month, old_amount, new_amount, due_date } => c(
            format!("Su factura de {} cambió", month(l, *coverage_month)),
            vec![format!("Como cambió su crédito tributario para la prima, su factura de {} ahora es de {} en lugar de {}.", month(l, *coverage_month), money(*new_amount), money(*old_amount))],
            vec![("Monto nuevo", money(*new_amount)), ("Monto anterior", money(*old_amount)), ("Fecha de vencimiento", date(l, *due_date))],
            Some(("Ver sus facturas".into(), format!("{url}/dashboard?lang=es"))),
        ),
        NoticeBody::DueDateReminder { amount, due_date, days_before } => c(
            format!("Recordatorio: {} vence el {}", money(*amount), date(l, *due_date)),
            vec![format!("Su pago de la prima de {} vence en {days_before} días, el {}. Pague antes de esa fecha para mantener su cobertura.", money(*amount), date(l, *due_date))],
            vec![("Monto adeudado", money(*amount)), ("Fecha de vencimiento", date(l, *due_date))],
            pay,
        ),
        NoticeBody::AutopayPreDebit { amount, debit_date, method } => c(
            format!("Próximo pago automático de {} el {}", money(*amount), date(l, *debit_date)),
            vec![format!("El {} cobraremos {} de su {method} por su prima. Para cambiarlo o pausarlo, vaya a Configuración, Pagos automáticos antes de esa fecha.", date(l, *debit_date), money(*amount))],
            vec![("Monto", money(*amount)), ("Fecha", date(l, *debit_date)), ("Método de pago", method.clone())],
            Some(("Pagos automáticos".into(), format!("{url}/settings/autopay?lang=es"))),
        ),
        NoticeBody::AutopayFailed { amount, method, reason, retry_on, suspended } => {
            let why = match reason {
                AutopayFailure::Declined { reason } => decline(l, *reason).to_owned(),
                AutopayFailure::Returned { code } => returned(l, *code),
                AutopayFailure::MethodUnavailable => "El método de pago ya no está disponible (se eliminó o está vencido).".to_owned(),
            };
            let mut p = vec![format!("Su pago automático de {} no se procesó.", money(*amount)), why];
            if *suspended {
                p.push("Los pagos automáticos se pausan después de dos fallas seguidas. Pague ahora y actualice su método de pago en Configuración, Pagos automáticos.".into());
            } else if let Some(d) = retry_on {
                p.push(format!("Lo intentaremos de nuevo el {}. Para evitar otra falla, revise la cuenta o actualice su método de pago.", date(l, *d)));
            }
            c("Su pago automático no se procesó".into(), p, vec![("Monto", money(*amount)), ("Método de pago", method.clone())], pay)
        }
        NoticeBody::PastDue { plan_name, amount, due_date, grace_ends_on } => c(
            format!("Su prima del plan {plan_name} está atrasada"),
            vec![
                format!("No recibimos su pago del plan {plan_name} con vencimiento el {}. Tiene {} atrasado en este plan.", date(l, *due_date), money(*amount)),
                format!("Su período de gracia termina el {}. Pague el monto total antes de esa fecha para mantener su cobertura. Si no puede pagarlo todo de una vez, puede solicitar un plan de pagos.", date(l, *grace_ends_on)),
            ],
            vec![("Plan", plan_name.clone()), ("Monto atrasado", money(*amount)), ("Vencimiento no pagado", date(l, *due_date)), ("Fin del período de gracia", date(l, *grace_ends_on))],
            pay,
        ),
        NoticeBody::TerminationWarning { plan_name, amount, grace_ends_on, termination_effective } => {
            let second = kind == NoticeKind::SecondTerminationWarning;
            c(
                if second { format!("Aviso final: su cobertura del plan {plan_name} terminará si no paga") } else { format!("Su cobertura del plan {plan_name} terminará si no paga") },
                vec![
                    format!("Usted debe {} del plan {plan_name}. Si no se paga antes del {}, esta cobertura terminará por falta de pago a partir del {}.", money(*amount), date(l, *grace_ends_on), date(l, *termination_effective)),
                    "Pague ahora o comuníquese con nosotros para establecer un plan de pagos.".into(),
                ],
                vec![("Plan", plan_name.clone()), ("Monto adeudado", money(*amount)), ("Pague antes del", date(l, *grace_ends_on)), ("La cobertura terminaría el", date(l, *termination_effective))],
                pay,
            )
        }
        NoticeBody::CoverageTerminated { plan_name, effective, reason, reinstatable_until, amount_to_reinstate } => c(
            format!("Su cobertura del plan {plan_name} terminó"),
            vec![
                match reason {
                    TerminationReason::NonPayment => format!("Su cobertura terminó el {} porque las primas no se pagaron antes del fin del período de gracia.", date(l, *effective)),
                },
                format!("Puede restablecerla pagando {} antes del {}.", money(*amount_to_reinstate), date(l, *reinstatable_until)),
            ],
            vec![("Plan", plan_name.clone()), ("Último día de cobertura", date(l, *effective)), ("Monto para restablecer la cobertura", money(*amount_to_reinstate)), ("Restablezca antes del", date(l, *reinstatable_until))],
            pay,
        ),
        NoticeBody::CoverageCancelled { plan_name, deadline } => c(
            format!("Su cobertura del plan {plan_name} no comenzó"),
            vec![
                format!("No recibimos su primer pago del plan {plan_name} antes del {}, por lo que esta cobertura no comenzó y fue cancelada. No debe nada por ella.", date(l, *deadline)),
                "El dinero que haya pagado queda en su cuenta como crédito. Para obtener cobertura, comuníquese con el Health Connector para inscribirse de nuevo.".into(),
            ],
            vec![("Plan", plan_name.clone()), ("El primer pago vencía el", date(l, *deadline))],
            Some(("Ver su cuenta".into(), format!("{url}/dashboard?lang=es"))),
        ),
        NoticeBody::CoverageReinstated { plan_name } => c(
            format!("Su cobertura del plan {plan_name} fue restablecida"),
            vec!["Recibimos su pago y su cobertura está activa de nuevo, sin interrupciones.".into()],
            vec![("Plan", plan_name.clone())],
            Some(("Ver su cuenta".into(), format!("{url}/dashboard?lang=es"))),
        ),
        NoticeBody::PaymentPlanSetUp { total, installments } => Content {
            subject: "Su plan de pagos está listo".into(),
            paragraphs: vec![format!("Su saldo atrasado de {} se divide en {} cuotas mensuales. Pagar cada una a tiempo mantiene su cobertura; si no paga una cuota, el plan termina.", money(*total), installments.len())],
            details: installments.iter().enumerate().map(|(i, (a, d))| (format!("Cuota {}", i + 1), format!("{} con vencimiento el {}", money(*a), date(l, *d)))).collect(),
            action: pay,
        },
        NoticeBody::PasswordReset { token, expires_at } => c(
            "Restablezca su contraseña".into(),
            vec![
                format!("Alguien pidió restablecer la contraseña de su cuenta del {}. Use el enlace de abajo antes del {}; funciona una sola vez.", b.portal_name, time(l, *expires_at)),
                "Si no fue usted, ignore este mensaje: su contraseña no cambia.".into(),
            ],
            vec![],
            Some(("Crear una contraseña nueva".into(), format!("{url}/reset-password?token={token}&lang=es"))),
        ),
        NoticeBody::PasswordChanged { changed_at } => c(
            "Se cambió su contraseña".into(),
            vec![format!("La contraseña de su cuenta se cambió el {}. Se cerraron todas sus sesiones.", time(l, *changed_at)), format!("Si no fue usted, llámenos de inmediato al {}.", b.support_phone)],
            vec![],
            Some(("Iniciar sesión".into(), format!("{url}/login?lang=es"))),
        ),
        NoticeBody::RefundIssued { reference, amount, method } => c(
            format!("Reembolso de {} emitido", money(*amount)),
            vec![format!("Reembolsamos {} a su {method}. Puede tardar de 5 a 10 días hábiles en aparecer.", money(*amount))],
            vec![("Número de referencia", reference.clone()), ("Monto reembolsado", money(*amount)), ("Reembolsado a", method.clone())],
            None,
        ),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders a notice in the member's language as plain text and HTML.
pub fn render(notice: &Notice, b: &Branding) -> Rendered {
    let lang = notice.language;
    let c = content(notice.kind, &notice.body, lang, b);
    let (hello, footer, security, unsubscribe_note) = match lang {
        Language::En => (
            format!("Hello {},", notice.name),
            format!(
                "Questions? Call {} or write to {}. Please do not reply to this email.",
                b.support_phone, b.support_email
            ),
            "We will never ask for your Social Security number, card number or password by email.",
            format!("Sent by the {}.", b.portal_name),
        ),
        Language::Es => (
            format!("Hola, {}:", notice.name),
            format!(
                "¿Preguntas? Llame al {} o escriba a {}. No responda a este mensaje.",
                b.support_phone, b.support_email
            ),
            "Nunca le pediremos su número de Seguro Social, número de tarjeta ni contraseña por correo electrónico.",
            format!("Enviado por el {}.", b.portal_name),
        ),
    };
    let mut text = format!("{hello}\n\n");
    for p in &c.paragraphs {
        text.push_str(p);
        text.push_str("\n\n");
    }
    for (k, v) in &c.details {
        text.push_str(&format!("{k}: {v}\n"));
    }
    if !c.details.is_empty() {
        text.push('\n');
    }
    if let Some((label, href)) = &c.action {
        text.push_str(&format!("{label}: {href}\n\n"));
    }
    text.push_str(&format!("{footer}\n{security}\n\n{unsubscribe_note}\n"));

    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"{}\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width\">\n<title>{}</title>\n</head>\n<body style=\"margin:0;padding:24px;background:#ffffff;color:#1a1a1a;font-family:Arial,Helvetica,sans-serif;font-size:16px;line-height:1.5\">\n<h1 style=\"font-size:22px;color:#14324f\">{}</h1>\n<p>{}</p>\n",
        lang.code(),
        escape(&c.subject),
        escape(&c.subject),
        escape(&hello)
    );
    for p in &c.paragraphs {
        html.push_str(&format!("<p>{}</p>\n", escape(p)));
    }
    if !c.details.is_empty() {
        html.push_str(
            "<table role=\"presentation\" style=\"border-collapse:collapse;margin:16px 0\">\n",
        );
        for (k, v) in &c.details {
            html.push_str(&format!(
                "<tr><th scope=\"row\" style=\"text-align:left;padding:4px 16px 4px 0;font-weight:bold\">{}</th><td style=\"padding:4px 0\">{}</td></tr>\n",
                escape(k),
                escape(v)
            ));
        }
        html.push_str("</table>\n");
    }
    if let Some((label, href)) = &c.action {
        html.push_str(&format!(
            "<p><a href=\"{}\" style=\"display:inline-block;background:#14324f;color:#ffffff;padding:10px 18px;border-radius:4px;text-decoration:none;font-weight:bold\">{}</a></p>\n",
            escape(href),
            escape(label)
        ));
    }
    html.push_str(&format!(
        "<hr style=\"border:none;border-top:1px solid #cccccc;margin:24px 0\">\n<p style=\"font-size:14px;color:#4a4a4a\">{}<br>{}</p>\n<p style=\"font-size:14px;color:#4a4a4a\">{}</p>\n</body>\n</html>\n",
        escape(&footer),
        escape(security),
        escape(&unsubscribe_note)
    ));
    Rendered {
        subject: c.subject,
        text,
        html,
    }
}
