"""A deterministic synthetic DIY retailer (tenant ``acme-diy``) for the demo run.

`build_plan(RetailerConfig(...))` draws every customer and every fact of a whole period from one seeded RNG,
so the same config always gives the same stream (ids and traceparents included). `generate()` yields the
envelopes in event-time order; `publish_stream()` sends them to Kafka at a given rate, so the simulated
clock (event time) runs as fast as the rate allows: 120 simulated days of 300 customers are ~4,000 events,
about 80 s at 50 events/s.

Survey answers and case resolutions cannot be planned ahead: they answer ``SurveyRequested`` /
``DetractorCaseOpened`` events the surveys service emits. `CustomerSimulator` consumes those result topics
and reacts (optional; the stream stands on its own without it).

Referral codes are HMAC(secret, tenant, customer id) in the referrals service (`derive_code`); with the same
secret (the program's ``ACME_DIY_REFERRAL_SECRET``) the retailer knows every code in advance. Without it, the
retailer falls back to invitations matched by contact hash (FriendInvited.invitee_contact_hash).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from loyalty_contracts.base import TENANT_SUBJECT, Event, Money
from loyalty_contracts.catalogue import SERVICES, TOPICS, dead_letter_topic, topic_for
from loyalty_contracts.envelope import DecodeError, Envelope, decode, encode
from loyalty_contracts.events.retail import (
    DELIVERY_FEE_CATEGORY,
    GIFT_CARD_CATEGORY,
    CaseResolved,
    CommunityActivity,
    ConsentChanged,
    Consents,
    ConsultationCompleted,
    ContactHashes,
    Contacts,
    CustomerRegistered,
    DeliveryCompleted,
    FriendInvited,
    ImprovementShipped,
    PurchaseLine,
    PurchaseMade,
    PurchaseRefunded,
    RefundedLine,
    ReviewLeft,
    SurveyAnswered,
)
from loyalty_contracts.events.surveys import (
    DetractorCaseOpened,
    FeedbackReceived,
    FollowUpRequested,
    SurveyRequested,
)
from loyalty_referrals.domain import derive_code

TENANT = "acme-diy"
SOURCE = "retailer/acme-diy"
CURRENCY = "EUR"
# Monday .. Sunday: weekends are the DIY store's busy days.
WEEKDAY_WEIGHTS = (0.8, 0.8, 0.9, 1.0, 1.2, 1.9, 1.4)
NO_ORGANIC_ORDERS = 10**9  # a profile whose purchases are all scripted (fraud scenarios)


# ---------------------------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class Product:
    sku: str
    category: str
    price_minor: int
    max_quantity: int = 1


CATALOGUE: dict[str, tuple[Product, ...]] = {
    "power_tools": (
        Product("DRL-18V-CORDLESS", "power_tools", 12900),
        Product("DRL-SDS-HAMMER", "power_tools", 18900),
        Product("SAW-CIRCULAR-1400", "power_tools", 14900),
        Product("SANDER-ORBITAL", "power_tools", 7900),
    ),
    "drill_bits": (
        Product("BIT-SET-HSS-19", "drill_bits", 1990, 2),
        Product("BIT-SDS-8MM", "drill_bits", 1250, 3),
        Product("BIT-WOOD-FLAT-6", "drill_bits", 1490, 2),
    ),
    "accessories": (
        Product("BATTERY-18V-4AH", "accessories", 5900),
        Product("CASE-SYSTAINER", "accessories", 3490),
        Product("GLOVES-WORK", "accessories", 790, 3),
    ),
    "tools": (
        Product("HAMMER-CLAW-16OZ", "tools", 1790),
        Product("WRENCH-SET-12", "tools", 3990),
        Product("LEVEL-60CM", "tools", 2200),
        Product("SCREWDRIVER-SET", "tools", 2490),
    ),
    "paint": (
        Product("PAINT-WHITE-10L", "paint", 5490, 3),
        Product("PRIMER-5L", "paint", 2490, 2),
        Product("BRUSH-SET", "paint", 690, 3),
        Product("ROLLER-KIT", "paint", 1590),
    ),
    "garden": (
        Product("HOSE-25M", "garden", 3490),
        Product("MOWER-ELECTRIC", "garden", 24900),
        Product("SEEDS-LAWN-1KG", "garden", 890, 4),
        Product("SOIL-40L", "garden", 690, 4),
    ),
    GIFT_CARD_CATEGORY: (
        Product("GIFTCARD-25", GIFT_CARD_CATEGORY, 2500),
        Product("GIFTCARD-50", GIFT_CARD_CATEGORY, 5000),
    ),
}
DELIVERY_FEE = Product("DELIVERY-STANDARD", DELIVERY_FEE_CATEGORY, 490)
FREE_DELIVERY_FROM_MINOR = 10000

# Category mix per customer segment (weights).
SEGMENTS: dict[str, dict[str, Any]] = {
    "pro": {
        "share": 0.12,
        "orders_per_day": 0.22,
        "mix": {"power_tools": 30, "drill_bits": 22, "accessories": 15, "tools": 20, "paint": 5, "garden": 4,
                GIFT_CARD_CATEGORY: 4},
    },
    "hobby": {
        "share": 0.48,
        "orders_per_day": 0.06,
        "mix": {"paint": 25, "garden": 25, "tools": 18, "drill_bits": 10, "power_tools": 10, "accessories": 8,
                GIFT_CARD_CATEGORY: 4},
    },
    "occasional": {
        "share": 0.40,
        "orders_per_day": 0.02,
        "mix": {"garden": 30, "paint": 30, "tools": 18, GIFT_CARD_CATEGORY: 10, "power_tools": 12},
    },
}
STORES = ("store-berlin-mitte", "store-hamburg-altona", "store-munich-pasing")
WEB_STORE = "web-shop"

EN_FIRST = ("Anna", "Ben", "Chloe", "David", "Emma", "Finn", "Grace", "Henry", "Isla", "Jack", "Katie", "Leo",
            "Mia", "Noah", "Olivia", "Paul", "Ruby", "Sam", "Tom", "Zoe")
EN_LAST = ("Baker", "Carter", "Evans", "Fischer", "Green", "Hughes", "Klein", "Meyer", "Novak", "Schmidt",
           "Taylor", "Wagner", "Weber", "Wood")
RU_FIRST = ("Алексей", "Анна", "Дмитрий", "Елена", "Иван", "Мария", "Никита", "Ольга", "Сергей", "Татьяна",
            "Юлия", "Павел")
RU_LAST = ("Иванов", "Смирнов", "Кузнецов", "Попов", "Соколов", "Лебедев", "Козлов", "Новиков", "Морозов")
EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
BLOCKED_DOMAIN = "mailinator.com"

# Survey comments per sentiment and locale; each hits the program's themes (delivery, staff, price, quality).
COMMENTS: dict[str, dict[str, tuple[str, ...]]] = {
    "promoter": {
        "en": (
            "Great quality drills, and the consultant helped me pick the right bits.",
            "Fast delivery, the parcel came a day early.",
            "Fair prices and friendly staff in the Hamburg store.",
            "Excellent quality paint, covered in one coat.",
        ),
        "ru": (
            "Отличное качество инструмента, консультант помог выбрать сверла.",
            "Быстрая доставка, посылка пришла на день раньше.",
            "Хорошие цены и вежливый персонал.",
        ),
    },
    "passive": {
        "en": (
            "Good range, but prices are a bit high.",
            "Delivery was fine, the courier could have called first.",
            "Decent quality, nothing special.",
        ),
        "ru": (
            "Хороший выбор, но цены немного высокие.",
            "Доставка нормальная, но курьер не позвонил.",
        ),
    },
    "detractor": {
        "en": (
            "The parcel arrived late and the courier was rude.",
            "Way too expensive compared to other shops.",
            "The saw broke after two weeks, poor quality.",
            "Delivery took ten days and nobody answered my emails.",
            "Overpriced drill bits and the staff did not know the products.",
        ),
        "ru": (
            "Доставка опоздала на три дня.",
            "Слишком дорого, у конкурентов дешевле.",
            "Дрель сломалась через неделю, брак.",
            "Курьер потерял посылку, персонал не помог.",
        ),
    },
}
QUESTION_ANSWERS = {
    "en": ("More time to try the tools.", "A shorter queue at the desk.", "Clearer prices on the shelf."),
    "ru": ("Больше времени, чтобы попробовать инструмент.", "Меньше очередь.", "Понятнее цены на полках."),
}
CASE_REPLIES = {
    "en": "We are sorry. We talked to our delivery partner and refunded your delivery fee. — {staff}",
    "ru": "Нам очень жаль. Мы поговорили со службой доставки и вернули стоимость доставки. — {staff}",
}
STAFF = ("care-anja", "care-lukas", "care-olga")


# ---------------------------------------------------------------------------------------------- config + plan


@dataclass(frozen=True)
class RetailerConfig:
    """Size, seed and period of the synthetic retailer."""

    customers: int = 300
    days: int = 120
    seed: int = 20260601
    start: datetime = datetime(2026, 6, 1, tzinfo=UTC)
    tenant: str = TENANT
    id_prefix: str = "c"  # customer ids are f"{id_prefix}-00001"; vary it per run on a shared stack
    referral_secret: bytes | None = None  # the referrals service's code secret; None → invitations only
    code_length: int = 8
    contact_hash_key: bytes = b"acme-diy-demo-contact-hash-key"
    refund_share: float = 0.05
    fraud: bool = True

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ValueError("customers must be at least 1")
        if self.days < 7:
            raise ValueError("days must be at least 7 (weekly seasonality needs a week)")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if not 0 <= self.refund_share < 1:
            raise ValueError("refund_share must be in [0, 1)")

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


@dataclass
class Profile:
    """One synthetic customer: who they are and how they behave."""

    customer_id: str
    name: str
    locale: str
    time_zone: str
    email: str
    email_domain: str
    phone: str | None
    telegram_chat_id: str | None
    consents: Consents
    segment: str
    registered_at: datetime
    orders_per_day: float
    online_share: float
    advocacy: float  # how likely they are to recommend (drives referrals and their NPS answers)
    cards: tuple[str, ...]  # payment fingerprint hashes
    address: str  # shipping address hash
    code: str | None = None
    first_order_after: datetime | None = None  # first organic purchase (None: never buys)


@dataclass(frozen=True)
class PlannedFraud:
    """A fraud scenario written into the stream, with the rejection the referrals service should give it."""

    kind: str
    referrer_id: str
    referee_id: str
    expected_reason: str


@dataclass
class RetailerPlan:
    config: RetailerConfig
    profiles: dict[str, Profile]
    envelopes: list[Envelope]
    frauds: list[PlannedFraud]
    referral_claims: dict[str, str]  # referee -> intended referrer (legitimate and fraudulent)
    uncovered: list[str] = field(default_factory=list)  # scenarios left out, with why

    def profile(self, customer_id: str) -> Profile | None:
        return self.profiles.get(customer_id)


def keyed_hash(key: bytes, value: str) -> str:
    """The retailer's keyed hash of a contact / card / address (hex HMAC-SHA256)."""
    return hmac.new(key, value.strip().lower().encode(), hashlib.sha256).hexdigest()


class _Builder:
    """Draws a whole plan from one RNG. Every random choice goes through `self.rng`, in a fixed order."""

    def __init__(self, config: RetailerConfig) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.facts: list[tuple[datetime, int, Event]] = []
        self.profiles: dict[str, Profile] = {}
        self.frauds: list[PlannedFraud] = []
        self.claims: dict[str, str] = {}
        self.uncovered: list[str] = []
        self.orders: list[PurchaseMade] = []
        self.order_delivery: dict[str, datetime] = {}
        self._seq = 0
        self._ids = Counter[str]()

    # -- small helpers

    def add(self, event: Event) -> None:
        self._seq += 1
        self.facts.append((event.occurred_at, self._seq, event))

    def next_id(self, kind: str) -> str:
        self._ids[kind] += 1
        return f"{kind}-{self._ids[kind]:06d}"

    def at(self, day: float, hour_from: float = 8.0, hour_to: float = 20.0) -> datetime:
        """A time on simulated day `day` (fraction ignored) between two hours (UTC, second precision)."""
        base = self.cfg.start + timedelta(days=math.floor(day))
        seconds = int(self.rng.uniform(hour_from * 3600, hour_to * 3600))
        return base + timedelta(seconds=seconds)

    def weekday_weight(self, moment: datetime) -> float:
        return WEEKDAY_WEIGHTS[moment.weekday()] / (sum(WEEKDAY_WEIGHTS) / 7)

    def hash(self, value: str) -> str:
        return keyed_hash(self.cfg.contact_hash_key, value)

    # -- customers

    def new_profile(self, index: int, registered_at: datetime, *, segment: str | None = None,
                    email_domain: str | None = None) -> Profile:
        rng = self.rng
        cid = f"{self.cfg.id_prefix}-{index:05d}"
        locale = "ru" if rng.random() < 0.3 else "en"
        if locale == "ru":
            name = f"{rng.choice(RU_FIRST)} {rng.choice(RU_LAST)[0]}."
        else:
            name = f"{rng.choice(EN_FIRST)} {rng.choice(EN_LAST)}"
        if segment is None:
            r = rng.random()
            segment = "pro" if r < SEGMENTS["pro"]["share"] else (
                "hobby" if r < SEGMENTS["pro"]["share"] + SEGMENTS["hobby"]["share"] else "occasional")
        domain = email_domain or rng.choice(EMAIL_DOMAINS)
        phone = f"+4915{rng.randrange(10**8, 10**9)}" if rng.random() < 0.7 else None
        telegram = str(rng.randrange(10**8, 10**10)) if rng.random() < 0.4 else None
        consents = Consents(transactional=True, service=True, marketing=rng.random() < 0.5,
                            survey=rng.random() < 0.75)
        rate = SEGMENTS[segment]["orders_per_day"] * rng.uniform(0.6, 1.4)
        cards = tuple(self.hash(f"card:{cid}:{k}") for k in range(1 if rng.random() < 0.7 else 2))
        profile = Profile(
            customer_id=cid,
            name=name,
            locale=locale,
            time_zone="Europe/Moscow" if locale == "ru" and rng.random() < 0.3 else "Europe/Berlin",
            email=f"{cid}@{domain}",
            email_domain=domain,
            phone=phone,
            telegram_chat_id=telegram,
            consents=consents,
            segment=segment,
            registered_at=registered_at,
            orders_per_day=rate,
            online_share=rng.uniform(0.15, 0.65),
            advocacy=rng.betavariate(2, 2),
            cards=cards,
            address=self.hash(f"address:{cid}"),
        )
        if self.cfg.referral_secret is not None:
            profile.code = derive_code(self.cfg.referral_secret, self.cfg.tenant, cid, self.cfg.code_length)
        # 85 % buy within a couple of weeks of registering; the rest never buy.
        if rng.random() < 0.85:
            profile.first_order_after = registered_at + timedelta(hours=rng.expovariate(1 / 60))
        self.profiles[cid] = profile
        return profile

    def register(self, p: Profile, referral_code: str | None = None) -> None:
        self.add(CustomerRegistered(
            customer_id=p.customer_id,
            occurred_at=p.registered_at,
            name=p.name,
            locale=p.locale,
            time_zone=p.time_zone,
            contacts=Contacts(email=p.email, phone=p.phone, telegram_chat_id=p.telegram_chat_id),
            consents=p.consents,
            referral_code=referral_code,
            contact_hashes=ContactHashes(
                email=self.hash(p.email), phone=self.hash(p.phone) if p.phone else None
            ),
            email_domain=p.email_domain,
        ))

    def registration_day(self) -> float:
        """35 % are the existing base (first two days); the rest join over 80 % of the period, weekends busier."""
        rng = self.rng
        if rng.random() < 0.35:
            return rng.uniform(0, 2)
        while True:
            day = rng.uniform(2, self.cfg.days * 0.8)
            weekday = (self.cfg.start + timedelta(days=math.floor(day))).weekday()
            if rng.random() < WEEKDAY_WEIGHTS[weekday] / max(WEEKDAY_WEIGHTS):
                return day

    # -- purchases

    def basket(self, segment: str) -> list[tuple[Product, int]]:
        rng = self.rng
        mix: dict[str, int] = SEGMENTS[segment]["mix"]
        categories = list(mix)
        weights = [mix[c] for c in categories]
        lines: dict[str, tuple[Product, int]] = {}
        for _ in range(rng.choices((1, 2, 3, 4), weights=(45, 30, 17, 8))[0]):
            product = rng.choice(CATALOGUE[rng.choices(categories, weights=weights)[0]])
            if product.sku not in lines:
                lines[product.sku] = (product, rng.randint(1, product.max_quantity))
        return list(lines.values())

    def purchase(self, p: Profile, when: datetime, *, lines: list[tuple[Product, int]] | None = None,
                 online: bool | None = None, card: str | None = None, address: str | None = None,
                 referral_code: str | None = None) -> PurchaseMade:
        rng = self.rng
        chosen = lines if lines is not None else self.basket(p.segment)
        is_online = (rng.random() < p.online_share) if online is None else online
        goods = sum(prod.price_minor * qty for prod, qty in chosen)
        if is_online and goods < FREE_DELIVERY_FROM_MINOR:
            chosen = [*chosen, (DELIVERY_FEE, 1)]
        order_lines = [
            PurchaseLine(line_id=f"l{i + 1}", sku=prod.sku, category=prod.category, quantity=qty,
                         unit_price=Money(amount_minor=prod.price_minor, currency=CURRENCY))
            for i, (prod, qty) in enumerate(chosen)
        ]
        total = sum(prod.price_minor * qty for prod, qty in chosen)
        order = PurchaseMade(
            customer_id=p.customer_id,
            occurred_at=when,
            order_id=self.next_id("o"),
            store_id=WEB_STORE if is_online else rng.choice(STORES),
            sales_channel=(rng.choice(("web", "web", "app")) if is_online else "store"),
            lines=order_lines,
            total=Money(amount_minor=total, currency=CURRENCY),
            referral_code=referral_code,
            payment_fingerprint_hash=card or rng.choice(p.cards),
            shipping_address_hash=(address or p.address) if is_online else None,
        )
        self.add(order)
        self.orders.append(order)
        if is_online:
            delivered = when + timedelta(days=rng.randint(1, 5), hours=rng.uniform(-3, 5))
            if delivered < self.cfg.end:
                self.order_delivery[order.order_id] = delivered
                self.add(DeliveryCompleted(customer_id=p.customer_id, occurred_at=delivered, order_id=order.order_id))
        elif rng.random() < 0.04:
            self.add(ConsultationCompleted(
                customer_id=p.customer_id, occurred_at=when - timedelta(minutes=rng.randint(10, 40)),
                consultation_id=self.next_id("consult"), store_id=order.store_id,
                topic=rng.choice(("Choosing a drill", "Painting a facade", "Lawn care")),
            ))
        return order

    def organic_orders(self, p: Profile) -> None:
        """First purchase at `first_order_after`, then a daily Bernoulli draw modulated by the weekday."""
        if p.first_order_after is None or p.orders_per_day >= NO_ORGANIC_ORDERS:
            return
        rng = self.rng
        first = p.first_order_after
        if first >= self.cfg.end:
            return
        store_hours = (9.0, 19.5)
        self.purchase(p, self._shop_time(first, store_hours))
        day = first.date() + timedelta(days=1)
        while (moment := datetime(day.year, day.month, day.day, tzinfo=UTC)) < self.cfg.end:
            if rng.random() < p.orders_per_day * self.weekday_weight(moment):
                self.purchase(p, moment + timedelta(seconds=int(rng.uniform(*store_hours) * 3600)))
            day += timedelta(days=1)

    def _shop_time(self, moment: datetime, hours: tuple[float, float]) -> datetime:
        start_of_day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        if hours[0] * 3600 <= (moment - start_of_day).total_seconds() <= hours[1] * 3600:
            return moment.replace(microsecond=0)
        return start_of_day + timedelta(days=1, seconds=int(self.rng.uniform(*hours) * 3600))

    # -- after-sales

    def refunds(self) -> None:
        """Exactly `refund_share` of all orders get a refund (full or partial) 1-14 days later, within the period."""
        rng = self.rng
        eligible = [o for o in self.orders if o.occurred_at + timedelta(days=15) <= self.cfg.end]
        wanted = min(len(eligible), round(self.cfg.refund_share * len(self.orders)))
        for order in rng.sample(eligible, wanted):
            after = self.order_delivery.get(order.order_id, order.occurred_at)
            when = after + timedelta(days=rng.randint(1, 10), hours=rng.uniform(0, 8))
            goods = [line for line in order.lines if line.category != DELIVERY_FEE_CATEGORY]
            partial = rng.random() < 0.45 and (len(goods) > 1 or goods[0].quantity > 1)
            if partial:
                line = rng.choice(goods)
                qty = rng.randint(1, line.quantity) if len(goods) > 1 else rng.randint(1, line.quantity - 1)
                self.add(PurchaseRefunded(
                    customer_id=order.customer_id, occurred_at=when, order_id=order.order_id,
                    refund_id=self.next_id("r"), full=False, lines=[RefundedLine(line_id=line.line_id, quantity=qty)],
                    amount=Money(amount_minor=qty * line.unit_price.amount_minor, currency=CURRENCY),
                ))
            else:
                self.add(PurchaseRefunded(
                    customer_id=order.customer_id, occurred_at=when, order_id=order.order_id,
                    refund_id=self.next_id("r"), full=True, lines=[], amount=order.total,
                ))

    def reviews(self) -> None:
        rng = self.rng
        for order in self.orders:
            if rng.random() >= 0.10:
                continue
            goods = [line for line in order.lines if line.category not in (DELIVERY_FEE_CATEGORY, GIFT_CARD_CATEGORY)]
            if not goods:
                continue
            line = rng.choice(goods)
            when = self.order_delivery.get(order.order_id, order.occurred_at) + timedelta(days=rng.uniform(2, 10))
            if when >= self.cfg.end:
                continue
            detailed = rng.random() < 0.35
            self.add(ReviewLeft(
                customer_id=order.customer_id, occurred_at=when.replace(microsecond=0),
                review_id=self.next_id("rev"), sku=line.sku, category=line.category,
                rating=rng.choices((5, 4, 3, 2, 1), weights=(50, 28, 10, 6, 6))[0],
                text_length=rng.randint(200, 900) if detailed else rng.randint(0, 150),
                has_photo=rng.random() < (0.3 if detailed else 0.08),
            ))

    def community(self, p: Profile) -> None:
        rng = self.rng
        if rng.random() >= (0.6 if p.segment == "pro" else 0.2):
            return
        moment = p.registered_at
        while True:
            moment += timedelta(days=rng.expovariate(1 / 9))
            if moment >= self.cfg.end:
                return
            self.add(CommunityActivity(
                customer_id=p.customer_id, occurred_at=moment.replace(microsecond=0),
                activity_id=self.next_id("act"),
                kind=rng.choices(("forum_answer", "project_published", "workshop_attended"), weights=(70, 20, 10))[0],
            ))

    def consent_changes(self, p: Profile) -> None:
        rng = self.rng
        if rng.random() >= 0.06:
            return
        when = p.registered_at + timedelta(days=rng.uniform(3, 60))
        if when < self.cfg.end:
            self.add(ConsentChanged(customer_id=p.customer_id, occurred_at=when.replace(microsecond=0),
                                    category="marketing", granted=not p.consents.marketing))

    # -- referrals

    def invite(self, referrer: Profile, invitee_email: str, at: datetime, domain: str | None = None) -> None:
        self.add(FriendInvited(
            customer_id=referrer.customer_id, occurred_at=at.replace(microsecond=0),
            invitation_id=self.next_id("inv"), invitee_contact_hash=self.hash(invitee_email),
            channel=self.rng.choice(("email", "link", "telegram")), invitee_email_domain=domain,
        ))

    def choose_referrer(self, before: datetime) -> Profile | None:
        candidates = [p for p in self.profiles.values()
                      if p.registered_at < before - timedelta(days=2) and p.orders_per_day < NO_ORGANIC_ORDERS]
        if not candidates:
            return None
        return self.rng.choices(candidates, weights=[p.advocacy**2 + 0.02 for p in candidates])[0]

    def claim_by(self, referee: Profile, referrer: Profile) -> str | None:
        """How a referee arrives: the referrer's code when codes are known, else an invitation. Returns the code."""
        self.claims[referee.customer_id] = referrer.customer_id
        if referrer.code is not None and self.rng.random() < 0.65:
            return referrer.code
        sent = referee.registered_at - timedelta(days=self.rng.uniform(0.5, 10))
        self.invite(referrer, referee.email, max(sent, referrer.registered_at + timedelta(minutes=5)))
        return None

    # -- fraud scenarios

    def fraud_scenarios(self, next_index: int) -> int:
        rng = self.rng
        base = [p for p in self.profiles.values() if p.registered_at < self.cfg.start + timedelta(days=2)]
        if len(base) < 3:
            self.uncovered.append("fraud scenarios: fewer than 3 customers in the existing base")
            return next_index
        days = self.cfg.days

        def scripted(day: float, **kw: Any) -> Profile:
            nonlocal next_index
            p = self.new_profile(next_index, self.at(day, 9, 18), **kw)
            next_index += 1
            p.orders_per_day = NO_ORGANIC_ORDERS  # every purchase below is scripted
            p.first_order_after = None
            return p

        big_basket = [(CATALOGUE["power_tools"][0], 1), (CATALOGUE["drill_bits"][0], 1)]

        # 1. Self-referral: a second account paying with the referrer's own card.
        owner = base[0]
        self.purchase(owner, self.at(days * 0.08, 10, 18), online=False, card=owner.cards[0], lines=big_basket)
        alt = scripted(days * 0.15)
        self.register(alt, referral_code=self.claim_by(alt, owner))
        self.purchase(alt, alt.registered_at + timedelta(hours=5), online=True, card=owner.cards[0], lines=big_basket)
        self.frauds.append(PlannedFraud("self_referral_card", owner.customer_id, alt.customer_id,
                                        "same_payment_fingerprint"))

        # 2. Same shipping address as the referrer (goes to staff review per the program).
        host = base[1]
        self.purchase(host, self.at(days * 0.1, 10, 18), online=True, lines=big_basket)
        lodger = scripted(days * 0.2)
        self.register(lodger, referral_code=self.claim_by(lodger, host))
        self.purchase(lodger, lodger.registered_at + timedelta(hours=3), online=True, address=host.address,
                      lines=big_basket)
        self.frauds.append(PlannedFraud("shared_address", host.customer_id, lodger.customer_id,
                                        "same_shipping_address"))

        # 3. Velocity abuse: 12 friends convert within a few days (the program caps 10 per 30 days).
        recruiter = base[2]
        for k in range(12):
            friend = scripted(days * 0.3 + k * 0.3)
            self.register(friend, referral_code=self.claim_by(friend, recruiter))
            self.purchase(friend, friend.registered_at + timedelta(hours=rng.uniform(2, 20)), online=False,
                          lines=[(CATALOGUE["power_tools"][3], 1)])
            if k >= 10:
                self.frauds.append(PlannedFraud("velocity", recruiter.customer_id, friend.customer_id,
                                                "velocity_limit"))

        # 4. Blocked e-mail domain: an invitation to a throwaway mailbox that registers and buys.
        inviter = base[-1]
        throwaway = scripted(days * 0.35, email_domain=BLOCKED_DOMAIN)
        self.claims[throwaway.customer_id] = inviter.customer_id
        self.invite(inviter, throwaway.email, throwaway.registered_at - timedelta(days=1), domain=BLOCKED_DOMAIN)
        self.register(throwaway)
        self.purchase(throwaway, throwaway.registered_at + timedelta(hours=6), online=False, lines=big_basket)
        self.frauds.append(PlannedFraud("blocked_domain", inviter.customer_id, throwaway.customer_id,
                                        "blocked_domain"))

        # 5. A cycle: A refers B, then A's own first purchase uses B's code (needs codes known in advance).
        if self.cfg.referral_secret is None:
            self.uncovered.append("referral cycle: needs the referral code secret (codes are HMAC-derived)")
            return next_index
        a = scripted(days * 0.4)
        self.register(a)
        b = scripted(days * 0.45)
        self.claims[b.customer_id] = a.customer_id
        self.register(b, referral_code=a.code)
        self.purchase(b, b.registered_at + timedelta(hours=4), online=False, lines=big_basket)
        self.claims[a.customer_id] = b.customer_id
        self.purchase(a, b.registered_at + timedelta(days=2), online=False, lines=big_basket, referral_code=b.code)
        self.frauds.append(PlannedFraud("cycle", b.customer_id, a.customer_id, "referral_cycle"))
        return next_index

    # -- the whole period

    def build(self) -> RetailerPlan:
        cfg, rng = self.cfg, self.rng
        days = sorted(self.registration_day() for _ in range(cfg.customers))
        organic: list[Profile] = []
        for index, day in enumerate(days, start=1):
            p = self.new_profile(index, self.at(day, 7, 22))
            code: str | None = None
            if day >= 3:
                r = rng.random()
                referrer = self.choose_referrer(p.registered_at) if r < 0.28 else None
                if referrer is not None:
                    code = self.claim_by(p, referrer)
            self.register(p, referral_code=code)
            organic.append(p)
        # Invitations that never turn into a registration (most invitations do not).
        for p in organic:
            if rng.random() < p.advocacy * 0.25:
                when = p.registered_at + timedelta(days=rng.uniform(1, 40))
                if when < cfg.end:
                    self.invite(p, f"friend-of-{p.customer_id}-{rng.randrange(10**6)}@example.com", when)
        for p in organic:
            self.organic_orders(p)
            self.community(p)
            self.consent_changes(p)
        if cfg.fraud:
            self.fraud_scenarios(len(days) + 1)
        self.refunds()
        self.reviews()
        self.add(ImprovementShipped(
            customer_id=TENANT_SUBJECT, occurred_at=self.at(cfg.days * 0.75, 10, 12),
            improvement_id="impr-delivery-2d", theme="delivery",
            messages={"en": "You told us deliveries were slow: standard delivery now takes 2 days.",
                      "ru": "Вы писали, что доставка медленная: теперь стандартная доставка занимает 2 дня."},
            since=cfg.start,
        ))
        return self.plan()

    def plan(self) -> RetailerPlan:
        self.facts.sort(key=lambda item: (item[0], item[1]))
        envelopes = [
            Envelope.new(event, tenant=self.cfg.tenant, source=SOURCE, id=str(_uuid(self.rng)),
                         traceparent=_traceparent(self.rng))
            for _, _, event in self.facts
        ]
        return RetailerPlan(self.cfg, self.profiles, envelopes, self.frauds, self.claims, self.uncovered)


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _traceparent(rng: random.Random) -> str:
    return f"00-{rng.getrandbits(128) | 1:032x}-{rng.getrandbits(64) | 1:016x}-01"


def build_plan(config: RetailerConfig | None = None) -> RetailerPlan:
    """Draw the whole period: customers, their facts and the fraud scenarios (pure, deterministic)."""
    return _Builder(config or RetailerConfig()).build()


def generate(config: RetailerConfig | None = None) -> Iterator[Envelope]:
    """The retailer's envelopes in event-time order."""
    yield from build_plan(config).envelopes


# ---------------------------------------------------------------------------------------------- expected facts


@dataclass(frozen=True)
class ExpectedFacts:
    """What the published stream implies, to compare with the services' final state."""

    counts: dict[str, int]  # event name -> events published
    customers: int
    orders_per_customer: dict[str, int]
    net_goods_minor: dict[str, int]  # per customer: goods paid (no delivery fees, gift cards) less refunds
    refund_share: float
    referral_claims: int  # registrations with a code + invitations that match a later registration

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(sorted(self.counts.items())),
            "customers": self.customers,
            "orders": sum(self.orders_per_customer.values()),
            "refund_share": round(self.refund_share, 4),
            "referral_claims": self.referral_claims,
            "net_goods_minor_total": sum(self.net_goods_minor.values()),
        }


def _counts_as_goods(category: str) -> bool:
    return category not in (DELIVERY_FEE_CATEGORY, GIFT_CARD_CATEGORY)


def expected_facts(envelopes: Iterable[Envelope]) -> ExpectedFacts:
    counts: Counter[str] = Counter()
    orders: Counter[str] = Counter()
    net: Counter[str] = Counter()
    unit_price: dict[tuple[str, str], tuple[str, int]] = {}  # (order, line) -> (category, unit price)
    goods_left: dict[str, int] = {}  # order -> goods value not yet refunded
    invited: set[str] = set()
    claims = 0
    for env in envelopes:
        data = env.data
        counts[data.event_type] += 1
        if isinstance(data, PurchaseMade):
            orders[data.customer_id] += 1
            goods = 0
            for line in data.lines:
                unit_price[(data.order_id, line.line_id)] = (line.category, line.unit_price.amount_minor)
                if _counts_as_goods(line.category):
                    goods += line.quantity * line.unit_price.amount_minor
            goods_left[data.order_id] = goods
            net[data.customer_id] += goods
        elif isinstance(data, PurchaseRefunded):
            left = goods_left.get(data.order_id, 0)
            if data.full:
                refunded = left
            else:
                refunded = 0
                for refunded_line in data.lines:
                    category, price = unit_price.get((data.order_id, refunded_line.line_id), ("", 0))
                    if _counts_as_goods(category):
                        refunded += refunded_line.quantity * price
                refunded = min(refunded, left)
            goods_left[data.order_id] = left - refunded
            net[data.customer_id] -= refunded
        elif isinstance(data, FriendInvited):
            invited.add(data.invitee_contact_hash)
        elif isinstance(data, CustomerRegistered):
            hashes = data.contact_hashes
            if data.referral_code or (hashes is not None and hashes.email in invited):
                claims += 1
    total_orders = counts["PurchaseMade"]
    return ExpectedFacts(
        counts=dict(counts),
        customers=counts["CustomerRegistered"],
        orders_per_customer=dict(orders),
        net_goods_minor=dict(net),
        refund_share=counts["PurchaseRefunded"] / total_orders if total_orders else 0.0,
        referral_claims=claims,
    )


# ---------------------------------------------------------------------------------------------- Kafka


def catalogue_topic_names(prefix: str = "") -> list[str]:
    """Every catalogue topic and dead-letter topic, optionally prefixed (isolated test runs)."""
    return [prefix + t.name for t in TOPICS] + [prefix + dead_letter_topic(s) for s in SERVICES]


async def ensure_topics(bootstrap: str, prefix: str = "") -> list[str]:
    """Create every catalogue topic and the dead-letter topics (existing ones are left alone)."""
    from loyalty_kit.topics import ensure_topics as create_missing

    names = catalogue_topic_names(prefix)
    await create_missing(bootstrap, names, prefix=prefix)
    return names


async def topic_partitions(bootstrap: str, names: Iterable[str]) -> list[Any]:
    """TopicPartitions of the named topics that exist (fresh metadata from the brokers)."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(names))
    finally:
        await admin.close()
    return [TopicPartition(t["topic"], p["partition"]) for t in described if t["error_code"] == 0
            for p in sorted(t["partitions"], key=lambda p: p["partition"])]


async def all_topic_partitions(bootstrap: str, names: Iterable[str], timeout_s: float = 30.0) -> list[Any]:
    """TopicPartitions of every named topic, waiting while freshly created ones reach the broker's metadata.

    Right after CreateTopics a broker can still answer UNKNOWN_TOPIC_OR_PARTITION for a new topic for a moment.
    """
    wanted = set(names)
    deadline = time.monotonic() + timeout_s
    while True:
        partitions = await topic_partitions(bootstrap, sorted(wanted))
        missing = wanted - {tp.topic for tp in partitions}
        if not missing:
            return partitions
        if time.monotonic() >= deadline:
            unknown = ", ".join(sorted(missing))
            raise RuntimeError(f"topics still unknown to the broker after {timeout_s:.0f} s: {unknown}")
        await asyncio.sleep(0.2)


class SimClock:
    """The simulated clock: the event time of the latest published retailer event."""

    def __init__(self) -> None:
        self.now: datetime | None = None

    def advance(self, moment: datetime) -> None:
        if self.now is None or moment > self.now:
            self.now = moment


@dataclass(frozen=True)
class PublishStats:
    published: int
    seconds: float
    by_type: dict[str, int]

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[int, Envelope], None]


async def publish_stream(
    bootstrap: str,
    envelopes: Iterable[Envelope],
    rate: float,
    progress_cb: ProgressCallback | None = None,
    *,
    clock: SimClock | None = None,
    stop: asyncio.Event | None = None,
    topic_prefix: str = "",
) -> PublishStats:
    """Publish envelopes in order at `rate` events/s (0 or less: as fast as possible).

    Creates the catalogue topics first. Uses an idempotent producer (acks=all), so a retry never duplicates.
    `stop` ends the stream early (Ctrl-C); what was sent is flushed either way. `topic_prefix` isolates a run.
    """
    from aiokafka import AIOKafkaProducer

    await ensure_topics(bootstrap, topic_prefix)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5)
    await producer.start()
    started = time.monotonic()
    count = 0
    by_type: Counter[str] = Counter()
    pending: list[asyncio.Future[Any]] = []
    try:
        for env in envelopes:
            if stop is not None and stop.is_set():
                break
            if rate > 0:
                ahead = started + count / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            record = encode(env)
            pending.append(await producer.send(topic_prefix + record.topic, record.value, key=record.key,
                                               headers=record.headers))
            count += 1
            by_type[env.data.event_type] += 1
            if clock is not None:
                clock.advance(env.time)
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
            if progress_cb is not None:
                progress_cb(count, env)
        await producer.flush()
        if pending:
            await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return PublishStats(count, time.monotonic() - started, dict(by_type))


# ---------------------------------------------------------------------------------------------- customer simulator


def sentiment_of_nps(score: int) -> str:
    return "promoter" if score >= 9 else ("passive" if score >= 7 else "detractor")


def nps_answer(rng: random.Random, locale: str, lean: float = 0.0) -> tuple[int, str | None]:
    """45 % promoters, 35 % passives (most 7-8 without a comment), 20 % detractors (mostly with a comment).

    `lean` in [-1, 1] tilts one customer's answer (their advocacy); centred on 0 over the population, it keeps
    the overall shares while making the customers who refer friends more often the ones who say they would.
    """
    lean = max(-1.0, min(1.0, lean))
    promoters = 0.45 + 0.25 * lean
    detractors = 0.20 - 0.12 * lean
    r = rng.random()
    if r < promoters:
        score, comment_share = rng.choice((9, 10, 10)), 0.45
    elif r < 1 - detractors:
        score, comment_share = rng.choice((7, 8)), 0.35
    else:
        score, comment_share = rng.choices((0, 1, 2, 3, 4, 5, 6), weights=(3, 2, 4, 6, 8, 12, 15))[0], 0.85
    if rng.random() >= comment_share:
        return score, None
    return score, rng.choice(COMMENTS[sentiment_of_nps(score)][_lang(locale)])


def csat_answer(rng: random.Random, locale: str) -> tuple[int, str | None]:
    score = rng.choices((5, 4, 3, 2, 1), weights=(45, 30, 12, 7, 6))[0]
    sentiment = "promoter" if score == 5 else ("passive" if score >= 3 else "detractor")
    if rng.random() >= (0.3 if score >= 4 else 0.8):
        return score, None
    return score, rng.choice(COMMENTS[sentiment][_lang(locale)])


def question_answer(rng: random.Random, locale: str) -> tuple[int, str | None]:
    return rng.choices((5, 4, 3, 2), weights=(40, 35, 15, 10))[0], rng.choice(QUESTION_ANSWERS[_lang(locale)])


def _lang(locale: str) -> str:
    return "ru" if locale.startswith("ru") else "en"


def answer_survey(request: SurveyRequested, profile: Profile, answered_at: datetime,
                  rng: random.Random, answer_share: float = 0.6) -> SurveyAnswered | None:
    """Whether and how a customer answers a survey request (no consent: they never saw it)."""
    if not profile.consents.survey or rng.random() >= answer_share:
        return None
    if request.kind == "nps":
        score, comment = nps_answer(rng, profile.locale, lean=2 * (profile.advocacy - 0.5))
    else:
        score, comment = (csat_answer if request.kind == "csat" else question_answer)(rng, profile.locale)
    return SurveyAnswered(
        customer_id=request.customer_id, occurred_at=answered_at, survey_id=request.survey_id,
        request_id=request.request_id, score=score, comment=comment,
        answer_channel=rng.choice(("email", "sms", "web")),
    )


def resolve_case(case: DetractorCaseOpened, profile: Profile | None, rng: random.Random,
                 resolve_share: float = 0.85, on_time_share: float = 0.8) -> CaseResolved | None:
    """Staff resolve most cases, most of them before the deadline; the rest breach it or stay open."""
    if rng.random() >= resolve_share:
        return None
    window = max(case.deadline_at - case.occurred_at, timedelta(hours=1))
    if rng.random() < on_time_share:
        resolved_at = case.occurred_at + window * rng.uniform(0.1, 0.9)
    else:
        resolved_at = case.deadline_at + timedelta(hours=rng.uniform(2, 48))
    staff = rng.choice(STAFF)
    locale = _lang(profile.locale) if profile else "en"
    return CaseResolved(customer_id=case.customer_id, occurred_at=resolved_at.replace(microsecond=0),
                        case_id=case.case_id, reply=CASE_REPLIES[locale].format(staff=staff), resolved_by=staff)


class CustomerSimulator:
    """Optional feedback loop: customers answer survey requests and follow-ups, staff resolve detractor cases.

    It reads the surveys service's result topics from the moment `start()` is called (no consumer group, so
    nothing is committed), and publishes each reaction once the simulated clock is within `lookahead` of its
    event time, so reactions stay in step with the stream. `drain()` publishes whatever is still scheduled.
    """

    WATCHED = (SurveyRequested, FollowUpRequested, FeedbackReceived, DetractorCaseOpened)

    def __init__(self, bootstrap: str, plan: RetailerPlan, clock: SimClock, *, seed: int = 7,
                 answer_share: float = 0.6, resolve_share: float = 0.85, on_time_share: float = 0.8,
                 topic_prefix: str = "", lookahead: timedelta = timedelta(hours=12)) -> None:
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        # Publish a reaction this much simulated time early: at 80 events/s a simulated day passes in about half a
        # second, so waiting for the exact time would let the services' event-time clock pass a case deadline
        # before the (on-time) resolution arrives. Moving the tenant clock a few hours ahead is harmless.
        self.lookahead = lookahead
        self.plan = plan
        self.clock = clock
        self.rng = random.Random(seed)
        self.answer_share = answer_share
        self.resolve_share = resolve_share
        self.on_time_share = on_time_share
        self.published: Counter[str] = Counter()
        self.ignored = 0  # results for other tenants / customers not in this plan
        self._scheduled: list[tuple[datetime, int, Event]] = []
        self._seq = 0
        # A follow-up answer names the original survey: request id -> survey id, feedback id -> (request, score).
        self._surveys: dict[str, str] = {}
        self._feedback: dict[str, tuple[str | None, int]] = {}
        self._consumer: Any = None
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        await ensure_topics(self.bootstrap, self.topic_prefix)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                          enable_auto_commit=False)
        await self._consumer.start()
        partitions = await all_topic_partitions(
            self.bootstrap, [self.topic_prefix + topic_for(model.ce_type()) for model in self.WATCHED])
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the end offsets now, before the stream starts
            await self._consumer.position(tp)
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all")
        await self._producer.start()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batches = await self._consumer.getmany(timeout_ms=200, max_records=500)
            for records in batches.values():
                for record in records:
                    self._react(record)
            now = self.clock.now
            if now is not None:  # before the stream starts nothing is due
                await self._publish_due(now + self.lookahead)

    async def drain(self, settle_s: float = 0.0) -> None:
        """Read what is left, then publish every scheduled reaction whatever its time."""
        deadline = time.monotonic() + settle_s
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=500)
            for records in batches.values():
                for record in records:
                    self._react(record)
            if time.monotonic() >= deadline:
                break
        await self._publish_due(None)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    def _schedule(self, event: Event) -> None:
        self._seq += 1
        self._scheduled.append((event.occurred_at, self._seq, event))

    def _react(self, record: Any) -> None:
        try:
            env = decode(record.key, record.value, record.headers)
        except DecodeError:
            self.ignored += 1
            return
        data = env.data
        profile = self.plan.profile(data.customer_id)
        if env.tenant != self.plan.config.tenant or profile is None:
            self.ignored += 1
            return
        now = max(data.occurred_at, self.clock.now or data.occurred_at)
        answered_at = (now + timedelta(minutes=self.rng.uniform(5, 180))).replace(microsecond=0)
        if isinstance(data, SurveyRequested):
            self._surveys[data.request_id] = data.survey_id
            answer = answer_survey(data, profile, answered_at, self.rng, self.answer_share)
            if answer is not None:
                self._schedule(answer)
        elif isinstance(data, FeedbackReceived):
            self._feedback[data.feedback_id] = (data.request_id, data.score)
        elif isinstance(data, FollowUpRequested):
            request_id, score = self._feedback.get(data.feedback_id, (None, None))  # type: ignore[assignment]
            survey_id = self._surveys.get(request_id or "")
            if survey_id is None or score is None:
                self.ignored += 1  # the original request is older than this simulator: cannot answer it right
            elif self.rng.random() < 0.5:
                self._schedule(SurveyAnswered(
                    customer_id=data.customer_id, occurred_at=answered_at, survey_id=survey_id,
                    request_id=data.request_id, score=score,
                    comment=self.rng.choice(COMMENTS["passive"][_lang(profile.locale)]), answer_channel="email",
                ))
        elif isinstance(data, DetractorCaseOpened):
            resolution = resolve_case(data, profile, self.rng, self.resolve_share, self.on_time_share)
            if resolution is not None:
                self._schedule(resolution)

    async def _publish_due(self, now: datetime | None) -> None:
        if not self._scheduled:
            return
        self._scheduled.sort(key=lambda item: (item[0], item[1]))
        due = [item for item in self._scheduled if now is None or item[0] <= now]
        if not due:
            return
        self._scheduled = self._scheduled[len(due):]
        for _, _, event in due:
            env = Envelope.new(event, tenant=self.plan.config.tenant, source=SOURCE,
                               id=str(_uuid(self.rng)), traceparent=_traceparent(self.rng))
            record = encode(env)
            await self._producer.send(self.topic_prefix + record.topic, record.value, key=record.key,
                                      headers=record.headers)
            self.published[event.event_type] += 1
        await self._producer.flush()


def describe_plan(plan: RetailerPlan) -> str:
    """One paragraph for the terminal: size, period, fraud scenarios."""
    facts = expected_facts(plan.envelopes)
    frauds = Counter(f.kind for f in plan.frauds)
    lines = [
        f"retailer {plan.config.tenant}: {facts.customers} customers, {len(plan.envelopes)} events over "
        f"{plan.config.days} simulated days from {plan.config.start.date()}",
        f"  orders {sum(facts.orders_per_customer.values())}, refunds {facts.counts.get('PurchaseRefunded', 0)} "
        f"({facts.refund_share:.1%}), referral claims {facts.referral_claims}, fraud scenarios "
        + (", ".join(f"{k}×{v}" for k, v in sorted(frauds.items())) or "none"),
    ]
    lines += [f"  not covered: {reason}" for reason in plan.uncovered]
    return "\n".join(lines)


def envelopes_as_jsonl(envelopes: Iterable[Envelope]) -> Iterator[str]:
    """Debug dump of a stream (one JSON object per line)."""
    for env in envelopes:
        yield json.dumps({"id": env.id, "type": env.type, "time": env.time.isoformat(), "subject": env.subject,
                          "data": env.data.model_dump(mode="json")}, ensure_ascii=False)


@dataclass(frozen=True)
class StreamResult:
    stats: PublishStats
    simulated: dict[str, int]  # events the customer simulator published, by name
    expected: ExpectedFacts  # over everything published (retailer + simulator)


async def run_stream(
    bootstrap: str,
    plan: RetailerPlan,
    *,
    rate: float,
    progress_cb: ProgressCallback | None = None,
    simulate: bool = True,
    stop: asyncio.Event | None = None,
    settle_s: float = 5.0,
    topic_prefix: str = "",
) -> StreamResult:
    """Publish the plan at `rate` with the customer simulator reacting alongside (the `loyalty run` loop).

    After the stream, the simulator keeps reading for `settle_s` seconds (results of the last events), then
    publishes every reaction still scheduled.
    """
    clock = SimClock()
    simulator = CustomerSimulator(bootstrap, plan, clock, seed=plan.config.seed + 1,
                                  topic_prefix=topic_prefix) if simulate else None
    sim_stop = asyncio.Event()
    sim_task: asyncio.Task[None] | None = None
    sent: list[Envelope] = []

    def remember(count: int, env: Envelope) -> None:
        sent.append(env)
        if progress_cb is not None:
            progress_cb(count, env)

    try:
        if simulator is not None:
            await simulator.start()
            sim_task = asyncio.create_task(simulator.run(sim_stop))
        stats = await publish_stream(bootstrap, plan.envelopes, rate, remember, clock=clock, stop=stop,
                                     topic_prefix=topic_prefix)
        if simulator is not None and sim_task is not None:
            sim_stop.set()
            await sim_task
            await simulator.drain(0 if stop is not None and stop.is_set() else settle_s)
    finally:
        sim_stop.set()
        if sim_task is not None and not sim_task.done():
            sim_task.cancel()
        if simulator is not None:
            await simulator.stop()
    expected = expected_facts(sent)
    simulated = dict(simulator.published) if simulator is not None else {}
    counts = Counter(expected.counts)
    counts.update(simulated)
    return StreamResult(stats, simulated, ExpectedFacts(
        counts=dict(counts), customers=expected.customers, orders_per_customer=expected.orders_per_customer,
        net_goods_minor=expected.net_goods_minor, refund_share=expected.refund_share,
        referral_claims=expected.referral_claims))
