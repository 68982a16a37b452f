"""Writes tests/data/near_duplicates_short.jsonl: `python tests/data/make_near_duplicates_short.py`.

A labelled set of short near-duplicates for the ``near_duplicates`` check: Japanese and English support questions
and answers of 40–200 characters (question and answer together), as Alpaca rows with two more keys, ``group`` and
``variant``. Each base row is a group; its variants change only what a near-duplicate changes:

- ``punctuation``: ``？``/``?``, ``。``/``．``/``.``, ``、``/``，``/``,``, ``！``/``!``, ``「」``/``『』``/``""``, a
  final ``。`` or ``.`` dropped, curly quotes, dashes;
- ``width``: full-width letters and digits, half-width katakana (``ﾊﾟｽﾜｰﾄﾞ``), or the reverse;
- ``whitespace``: a trailing space, a double space, an ideographic space (``U+3000``), a tab or a line break;
- ``word``: one word substituted (``ください``/``下さい``, ``click``/``press``) in the question or the answer;
- ``mixed``: the issue's case (``？``/``?``, a trailing space, ``。``/``．``) or a word with punctuation and width.

True non-duplicates share a template with another group: the same sentence frame with a different product,
amount or action in the question and in the answer (the Pro plan in one group, the Business plan in the other).
Rows of one group are near-duplicates of each other; rows of two groups are not. The rows are shuffled, so a
group's first row is not always its base. Deterministic: the same file on every run.
"""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

OUT = Path(__file__).with_name("near_duplicates_short.jsonl")
SEED = 20240611

# Templates: a question (Q), its answer (A) and the fills (F) of their {slots}, one group each; two fills of a
# template are true non-duplicates. A template without F is one group as it stands.
JA = """
Q: パスワードを忘れてしまいました。どうすればいいですか？
A: ログイン画面の「パスワードをお忘れの方」を押し、登録メールアドレスに届くリンクから再設定してください。

Q: {plan}の月額料金はいくらですか？
A: {plan}は月額{price}円（税込）です。年払いにすると2か月分お得になります。
F: {"plan": "ベーシックプラン", "price": "980"}
F: {"plan": "プレミアムプラン", "price": "2,480"}

Q: {area}への配送には何日かかりますか？
A: {area}へは発送から{days}日ほどでお届けします。離島の場合は数日多くかかります。
F: {"area": "北海道", "days": "2〜3"}
F: {"area": "沖縄県", "days": "3〜5"}

Q: 領収書を発行してもらえますか？
A: マイページの「注文履歴」から該当の注文を選び、「領収書を発行」ボタンを押すとPDFでダウンロードできます。

Q: {pay}で支払うことはできますか？
A: はい、{pay}でのお支払いに対応しております。お支払いページで「{pay}」を選択してください。
F: {"pay": "コンビニ払い"}
F: {"pay": "銀行振込"}

Q: 登録しているメールアドレスを変更したいです。
A: アカウント設定の「メールアドレス変更」から新しいアドレスを入力し、届いた確認メールのリンクを押してください。

Q: 解約はいつでもできますか？
A: はい、マイページの「契約内容」からいつでも解約できます。解約月の末日までご利用いただけます。

Q: {item}の返品はできますか？
A: {item}は到着後{days}日以内であれば返品を承ります。未開封の状態でご返送ください。
F: {"item": "ワイヤレスイヤホン", "days": "8"}
F: {"item": "スマートウォッチ", "days": "14"}

Q: ログインすると「アカウントがロックされています」と表示されます。
A: パスワードを5回続けて間違えるとロックされます。30分後に再度お試しいただくか、サポートまでご連絡ください。

Q: 二段階認証を設定するにはどうすればいいですか？
A: 「セキュリティ設定」から二段階認証をオンにし、認証アプリでQRコードを読み取ってください。

Q: {n}個以上まとめて注文すると割引はありますか？
A: はい、{n}個以上のご注文で{off}%割引になります。カートで自動的に適用されます。
F: {"n": "10", "off": "5"}
F: {"n": "50", "off": "12"}

Q: 配送先の住所を変更できますか？
A: 発送前であれば、マイページの「配送先を変更」から変更できます。発送後の変更はできません。

Q: クレジットカードの有効期限が切れました。
A: マイページの「お支払い方法」から新しいカード情報を登録してください。次回の請求から新しいカードが使われます。

Q: 請求書の宛名を会社名にできますか？
A: はい、請求書の発行ページで「宛名」欄に会社名を入力してから発行してください。

Q: アプリが起動しません。
A: 端末を再起動し、アプリを最新バージョンに更新してください。それでも解決しない場合は再インストールをお試しください。

Q: {day}もサポートに電話できますか？
A: {day}は{hours}まで電話窓口を受け付けています。チャットは24時間ご利用いただけます。
F: {"day": "土曜日", "hours": "午前10時から午後5時"}
F: {"day": "日曜日", "hours": "午前10時から正午"}

Q: ポイントの有効期限はいつまでですか？
A: ポイントの有効期限は、最後にご利用いただいた日から1年間です。期限はマイページで確認できます。

Q: 注文をキャンセルしたいです。
A: 発送準備前のご注文は、注文履歴の「キャンセル」ボタンから取り消せます。返金は5営業日以内に行います。

Q: ユーザーを{verb}するにはどうすればいいですか？
A: 管理画面の「ユーザー管理」を開き、「{verb}」ボタンを押して{then}してください。
F: {"verb": "追加", "then": "名前とメールアドレスを入力"}
F: {"verb": "削除", "then": "確認画面で「OK」を選択"}

Q: 退会するとデータはどうなりますか？
A: 退会後30日間はデータを保管し、その後すべて削除します。必要なデータは退会前にエクスポートしてください。

Q: 商品が破損して届きました。
A: ご迷惑をおかけして申し訳ございません。破損箇所の写真を添えて、お問い合わせフォームからご連絡ください。

Q: ギフト包装はできますか？
A: はい、1点につき300円でギフト包装を承ります。カート画面で「ギフト包装」にチェックを入れてください。

Q: {app}と連携できますか？
A: はい、「連携設定」から{app}を選び、{app}のアカウントでログインすると連携が完了します。
F: {"app": "Slack"}
F: {"app": "Googleカレンダー"}

Q: 今月の請求金額が二重になっています。
A: ご迷惑をおかけしています。ご請求日と金額をメールでお知らせください。二重請求が確認できた場合は全額を返金いたします。

Q: パスワードの条件を教えてください。
A: パスワードは8文字以上で、英字と数字をそれぞれ1文字以上含めてください。記号も使えます。

Q: {rank}会員になる条件は何ですか？
A: 年間のご購入金額が{yen}円を超えると、翌月から{rank}会員になります。
F: {"rank": "ゴールド", "yen": "50,000"}
F: {"rank": "プラチナ", "yen": "200,000"}

Q: 在庫切れの商品はいつ入荷しますか？
A: 入荷時期は商品ページに表示しています。「入荷お知らせ」を登録すると、入荷時にメールでお知らせします。

Q: 海外への発送には対応していますか？
A: 申し訳ございませんが、現在は日本国内への配送のみ承っております。海外配送サービスは準備中です。

Q: 支払い方法を変更したいのですが。
A: 次回の請求日の前日までに、マイページの「お支払い方法」から変更してください。

Q: {size}サイズに交換できますか？
A: 到着から7日以内であれば、{size}サイズへの交換を無料で承ります。
F: {"size": "M"}
F: {"size": "L"}

Q: ログイン履歴を確認できますか？
A: 「セキュリティ設定」の「ログイン履歴」で、直近90日間のログイン日時と端末を確認できます。

Q: 見積書を作成してもらえますか？
A: はい、カートに商品を入れた状態で「見積書を作成」を押すと、PDFの見積書を発行できます。

Q: 法人契約はできますか？
A: はい、法人向けプランをご用意しています。お問い合わせフォームで「法人契約」を選んでご連絡ください。

Q: 通知メールが届きません。
A: 迷惑メールフォルダをご確認ください。見つからない場合は、当社ドメインからのメールを受信できるよう設定してください。

Q: {month}月分の利用明細はどこで見られますか？
A: マイページの「利用明細」で{month}月を選ぶと、{month}月分の明細を表示できます。
F: {"month": "3"}
F: {"month": "4"}

Q: 無料体験の期間は何日ですか？
A: 無料体験は登録日から14日間です。期間中に解約すれば料金は一切かかりません。

Q: 複数の住所を登録できますか？
A: はい、「お届け先リスト」に最大10件まで住所を登録できます。

Q: {device}でも使えますか？
A: はい、{device}版のアプリをストアからダウンロードしてご利用いただけます。
F: {"device": "iPhone"}
F: {"device": "Android"}

Q: カートに入れた商品が消えました。
A: カートの商品は30日間保存されます。ログインせずに追加した商品は、ブラウザを閉じると消えることがあります。

Q: 配送業者を指定できますか？
A: 申し訳ございませんが、配送業者はご指定いただけません。地域ごとに最適な配送サービスでお届けします。
"""

EN = """
Q: I forgot my password. How do I reset it?
A: Click "Forgot password?" on the sign-in page and follow the link we email you. It expires after 24 hours.

Q: How much does the {plan} plan cost?
A: The {plan} plan is ${month} per user per month, or ${year} a year if you pay annually.
F: {"plan": "Pro", "month": "20", "year": "200"}
F: {"plan": "Business", "month": "45", "year": "450"}

Q: How long does shipping to {country} take?
A: Orders to {country} usually arrive within {days} business days after they ship.
F: {"country": "Canada", "days": "5-7"}
F: {"country": "Australia", "days": "10-14"}

Q: Can I change my shipping address after ordering?
A: Yes, as long as the order has not shipped. Open Orders, select the order and choose Edit address.

Q: How do I cancel my subscription?
A: Go to Settings > Billing and click Cancel subscription. You keep access until the end of the billing period.

Q: Why was I charged twice this month?
A: A pending authorization can look like a second charge. It drops off within 3-5 days; if not, contact us.

Q: How do I {verb} a team member?
A: Open Admin > Users, click {button}, then {then}.
F: {"verb": "add", "button": "Invite user", "then": "enter their email address"}
F: {"verb": "remove", "button": "Remove user", "then": "confirm in the dialog"}

Q: Can I pay with {method}?
A: Yes, we accept {method}. Choose it at checkout under Payment method.
F: {"method": "PayPal"}
F: {"method": "Apple Pay"}

Q: My account is locked. What should I do?
A: Accounts lock after five failed sign-in attempts. Wait 30 minutes, or reset your password to unlock it now.

Q: How do I turn on two-factor authentication?
A: Go to Security settings, switch on Two-factor authentication and scan the QR code with your authenticator app.

Q: Where can I download my invoice?
A: Invoices are under Billing > Invoice history. Click the invoice date to download it as a PDF.

Q: What is the return window for {goods}?
A: {Goods} can be returned within {days} days of delivery in their original packaging.
F: {"goods": "electronics", "Goods": "Electronics", "days": "30"}
F: {"goods": "furniture", "Goods": "Furniture", "days": "14"}

Q: How do I change the email address on my account?
A: Open Profile, enter the new address under Email and confirm it with the code we send you.

Q: The app crashes when I open it.
A: Update to the latest version and restart your phone. If it still crashes, reinstall the app; your data is safe.

Q: Do you offer a student discount?
A: Yes, students get 50% off any plan. Verify your status with your school email address at checkout.

Q: Is phone support available on {day}?
A: Phone support is open on {day} from {hours}. Chat support runs around the clock.
F: {"day": "Saturdays", "hours": "10am to 4pm"}
F: {"day": "Sundays", "hours": "noon to 4pm"}

Q: When do my reward points expire?
A: Points expire 12 months after your last purchase. You can see the expiry date on the Rewards page.

Q: How can I cancel an order?
A: If the order has not shipped, open Orders and click Cancel order. Refunds reach your card in 5-10 days.

Q: How do I export my data?
A: Go to Settings > Data and click Export. We email you a download link when the archive is ready.

Q: My package says delivered but I cannot find it.
A: Check with your neighbours first. If it has not turned up after 48 hours, contact us and we will open a claim.

Q: Can I upgrade from {old} to {new} mid-cycle?
A: Yes. When you upgrade to {new}, we charge only the prorated difference for the rest of this cycle.
F: {"old": "Basic", "new": "Pro"}
F: {"old": "Pro", "new": "Business"}

Q: How do I update my credit card?
A: Open Billing > Payment methods, click Add card, then set the new card as default and remove the old one.

Q: Do you ship to P.O. boxes?
A: We ship to P.O. boxes with standard shipping only. Express orders need a street address.

Q: Why did I not receive the verification email?
A: Check your spam folder and make sure the address is spelled correctly. You can request a new email.

Q: How many devices can I use on the {plan} plan?
A: You can sign in on up to {n} devices at once on the {plan} plan.
F: {"plan": "Standard", "n": "3"}
F: {"plan": "Family", "n": "6"}

Q: Can I get a refund for an annual plan?
A: Annual plans are refundable within 30 days of purchase. After that, you can turn off renewal instead.

Q: How do I connect {app}?
A: Open Integrations, choose {app} and sign in to authorize access. Notifications start within a few minutes.
F: {"app": "Slack"}
F: {"app": "Google Calendar"}

Q: Where is my order?
A: Open Orders and click Track package to see the carrier's latest update. Tracking appears within 24 hours.

Q: Can I change my username?
A: Usernames can be changed once every 30 days under Profile > Username.

Q: Is my payment information secure?
A: Yes. Card details are handled by our PCI-compliant payment provider and are never stored on our servers.

Q: How do I delete my account?
A: Go to Settings > Account and click Delete account. Your data is removed permanently after 30 days.

Q: Do you price match?
A: We do not price match, but we run sales every month. Sign up for our newsletter to hear about them first.

Q: Can I buy a gift card?
A: Yes, digital gift cards from $10 to $500 are on the Gift cards page and are delivered by email.

Q: How do I change the language of the app?
A: Open Settings > Language and pick one from the list. The app restarts in the new language.

Q: How long is the free trial?
A: The free trial lasts 14 days. We remind you by email 3 days before it ends, and you can cancel at any time.

Q: Is the {color} jacket available in size {size}?
A: The {color} jacket in size {size} is in stock and ships within 2 days.
F: {"color": "blue", "size": "M"}
F: {"color": "black", "size": "L"}

Q: Why is the app not syncing on my {device}?
A: Make sure your {device} is online and background refresh is on, then pull down on the home screen to sync.
F: {"device": "iPhone"}
F: {"device": "Android phone"}

Q: Can I pause my subscription?
A: Yes, you can pause for up to 3 months under Billing > Pause. You will not be charged while it is paused.

Q: What does error code {code} mean?
A: {code} means the payment was {why}. Please try another card.
F: {"code": "E102", "why": "declined by your bank"}
F: {"code": "E205", "why": "blocked by our fraud check"}

Q: How do I add a second shipping address?
A: Go to Account > Addresses and click Add address. You can choose between saved addresses at checkout.
"""


# one-word variants: (word, replacement), either way round in Japanese, one way only in English ("in" is not
# always "within")
JA_WORDS = [("ください", "下さい"), ("できます", "出来ます"), ("いただ", "頂"), ("ご連絡", "ご一報"),
            ("選んで", "選択して"), ("押して", "クリックして"), ("押す", "クリックする"),
            ("申し訳ございません", "申し訳ありません"), ("確認", "チェック"), ("マイページ", "会員ページ"),
            ("すべて", "全て"), ("場合", "際"), ("入力", "記入"), ("お届け", "配達"),
            ("承ります", "受け付けます"), ("ご利用", "お使い"), ("表示", "掲載"), ("お知らせ", "ご案内"),
            ("保存", "保管"), ("お試し", "試し"), ("登録", "設定"), ("発行", "作成"), ("変更", "更新"),
            ("いつ", "何時"), ("お得", "割安"), ("自動的に", "自動で"), ("取り消せます", "キャンセルできます"),
            ("行います", "いたします"), ("超え", "上回"), ("翌月", "次の月")]
EN_WORDS = [("click", "press"), ("Click", "Press"), ("choose", "select"), ("select", "pick"),
            ("Open", "Go to"), ("Go to", "Open"), ("usually", "typically"), ("within", "in"),
            ("contact", "reach"), ("remove", "delete"), ("cannot", "can't"), ("do not", "don't"),
            ("permanently", "for good"), ("Yes", "Sure"), ("shipping", "delivery"), ("email", "mail"),
            ("account", "profile"), ("purchase", "order"), ("can", "may"), ("at once", "at the same time"),
            ("first", "beforehand"), ("enter", "type"), ("latest", "newest"), ("a few", "several"),
            ("every month", "monthly"), ("in stock", "available"), ("Please", "Kindly"),
            ("Make sure", "Check that"), ("before", "prior to"), ("receive", "get"), ("request", "ask for"),
            ("a year", "per year"), ("Update", "Upgrade"), ("plan", "tier"), ("Wait", "Please wait"),
            ("around the clock", "24/7"), ("pick", "choose"), ("changed", "updated"), ("scan", "read"),
            ("handled", "processed"), ("try", "use"), ("street", "physical")]
FULLWIDTH = {chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)}  # ASCII → full-width forms
HALFWIDTH_KANA: dict[str, str] = {}  # katakana → half-width katakana (a voiced one as two characters)
for _c in range(0xFF66, 0xFFA0):
    _full = unicodedata.normalize("NFKC", chr(_c))
    if len(_full) == 1 and "\u30a0" <= _full <= "\u30ff":
        HALFWIDTH_KANA.setdefault(_full, chr(_c))
        for _mark in "\uff9e\uff9f":
            _voiced = unicodedata.normalize("NFKC", chr(_c) + _mark)
            if len(_voiced) == 1:
                HALFWIDTH_KANA.setdefault(_voiced, chr(_c) + _mark)


def punctuation(rng: random.Random, q: str, a: str, ja: bool) -> tuple[str, str]:
    swaps = ([("？", "?"), ("。", "．"), ("。", "."), ("、", "，"), ("、", ","), ("！", "!"), ("「", "『"),
              ("」", "』"), ("（", "("), ("）", ")"), ("〜", "～")] if ja else
             [("?", "？"), ("? ", "?? "), (". ", "! "), (", ", " , "), ("'", "\u2019"), ("-", "\u2013"), (":", "："),
              (".", "。"), ("\"", "\u201c"), (", ", " - ")])
    for _ in range(20):
        old, new = rng.choice(swaps)
        where = rng.randrange(2)
        parts = [q, a]
        if old in parts[where]:
            if rng.random() < 0.5:  # every one, or one of them
                parts[where] = parts[where].replace(old, new)
            else:
                i = rng.choice([i for i in range(len(parts[where])) if parts[where].startswith(old, i)])
                parts[where] = parts[where][:i] + new + parts[where][i + len(old):]
            q, a = parts
            if rng.random() < 0.5:
                break
    end = "。" if ja else "."
    if rng.random() < 0.3 and a.endswith(end):
        a = a[:-1]
    return q, a


def width(rng: random.Random, q: str, a: str, ja: bool) -> tuple[str, str]:
    has = {"fullwidth": lambda t: any(c.isascii() and c.isalnum() for c in t),
           "kana": lambda t: ja and any(c in HALFWIDTH_KANA for c in t),
           "halfwidth": lambda t: ja and any("\uff01" <= c <= "\uff5e" for c in t)}
    kind = rng.choice([k for k, test in has.items() if test(q + a)])
    parts = [q, a]
    where = rng.choice([i for i, t in enumerate(parts) if has[kind](t)])
    text = parts[where]
    if kind == "kana":  # ﾊﾟｽﾜｰﾄﾞ
        text = "".join(HALFWIDTH_KANA.get(c, c) for c in text)
    elif kind == "halfwidth":  # （税込） → (税込)
        text = "".join(unicodedata.normalize("NFKC", c) if "\uff01" <= c <= "\uff5e" else c for c in text)
    elif ja or rng.random() < 0.5:  # every letter and digit full-width
        text = "".join(FULLWIDTH.get(c, c) if c.isalnum() else c for c in text)
    else:  # one word full-width
        words = text.split(" ")
        k = rng.choice([i for i, w in enumerate(words) if has["fullwidth"](w)])
        words[k] = "".join(FULLWIDTH.get(c, c) for c in words[k])
        text = " ".join(words)
    parts[where] = text
    return parts[0], parts[1]


def whitespace(rng: random.Random, q: str, a: str, ja: bool) -> tuple[str, str]:
    parts = [q, a]
    for _ in range(rng.randint(1, 2)):
        where = rng.randrange(2)
        text = parts[where]
        kind = rng.choice(["trailing", "leading", "inside", "inside"])
        if kind == "trailing":
            text += rng.choice([" ", "  ", "\u3000", "\n"])
        elif kind == "leading":
            text = rng.choice([" ", "\u3000"]) + text
        elif ja:  # a space, an ideographic space or a line break after a punctuation mark
            cuts = [i + 1 for i, c in enumerate(text[:-1]) if c in "。、？」"] or [len(text)]
            i = rng.choice(cuts)
            text = text[:i] + rng.choice([" ", "\u3000", "\u3000", "\n"]) + text[i:]
        else:  # one space doubled, or made a tab, a line break or a no-break space
            cuts = [i for i, c in enumerate(text) if c == " "]
            i = rng.choice(cuts)
            text = text[:i] + rng.choice(["  ", "   ", "\t", "\n", "\u00a0"]) + text[i + 1:]
        parts[where] = text
    return parts[0], parts[1]


def word(rng: random.Random, q: str, a: str, ja: bool) -> tuple[str, str]:
    pairs = [p for w1, w2 in JA_WORDS for p in ((w1, w2), (w2, w1))] if ja else EN_WORDS
    options = [(where, i, old, new) for where, text in enumerate((q, a)) for old, new in pairs
               for i in range(len(text)) if text.startswith(old, i) and (ja or _whole_word(text, i, len(old)))]
    old, new = rng.choice(sorted({(old, new) for _, _, old, new in options}))  # a pair, then where
    where, i, old, new = rng.choice([o for o in options if o[2:] == (old, new)])
    parts = [q, a]
    parts[where] = parts[where][:i] + new + parts[where][i + len(old):]
    return parts[0], parts[1]


def _whole_word(text: str, i: int, n: int) -> bool:
    return not any(c.isalnum() or c in "-'" for c in text[i - 1:i] + text[i + n:i + n + 1])


def mixed(rng: random.Random, q: str, a: str, ja: bool) -> tuple[str, str]:
    if ja and rng.random() < 0.5:  # the case: ？ → ?, a trailing space, 。 → ．
        return q.replace("？", "?") + " ", a.replace("。", "．")
    q, a = word(rng, q, a, ja)
    q, a = punctuation(rng, q, a, ja)
    can_widen = any(c in HALFWIDTH_KANA or c.isascii() and c.isalnum() for c in q + a)
    return width(rng, q, a, ja) if can_widen and rng.random() < 0.5 else whitespace(rng, q, a, ja)


VARIANTS = {"punctuation": punctuation, "width": width, "whitespace": whitespace, "word": word, "mixed": mixed}


def templates(block: str) -> list[tuple[str, str, list[dict[str, str]]]]:
    """(question, answer, fills) of each template in a block."""
    out = []
    for entry in block.strip().split("\n\n"):
        lines = {key: [] for key in "QAF"}
        for line in entry.splitlines():
            lines[line[0]].append(line[3:])
        out.append((lines["Q"][0], lines["A"][0], [json.loads(f) for f in lines["F"]] or [{}]))
    return out


def rows() -> list[dict]:
    rng = random.Random(SEED)
    out = []
    for lang, block in (("ja", JA), ("en", EN)):
        for t, (question, answer, fills) in enumerate(templates(block)):
            for f, fill in enumerate(fills):
                group = f"{lang}{t:02d}{'ab'[f] if len(fills) > 1 else ''}"
                q, a = question.format(**fill), answer.format(**fill)
                assert 40 <= len(q) + len(a) <= 200, (group, len(q) + len(a))
                seen = {(q, a)}
                out.append({"instruction": q, "input": "", "output": a, "group": group, "variant": "base"})
                kinds = rng.sample(sorted(VARIANTS), 4)
                for kind in kinds:
                    for _ in range(50):
                        vq, va = VARIANTS[kind](rng, q, a, lang == "ja")
                        if (vq, va) not in seen:
                            break
                    else:
                        raise AssertionError(f"{group}: no {kind} variant")
                    seen.add((vq, va))
                    out.append({"instruction": vq, "input": "", "output": va, "group": group, "variant": kind})
    rng.shuffle(out)
    return out


def main() -> None:
    data = rows()
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
    groups = {r["group"] for r in data}
    print(f"{OUT.name}: {len(data)} rows, {len(groups)} groups "
          f"({sum(g.startswith('ja') for g in groups)} Japanese, {sum(g.startswith('en') for g in groups)} English)")


if __name__ == "__main__":
    main()
