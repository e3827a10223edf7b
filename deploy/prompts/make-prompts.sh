#!/usr/bin/env bash
# Regenerates every IVR prompt under deploy/prompts/{en,zh}/ from the text held in this script.
#
# Requirements: espeak-ng and sox only. It works on a fresh Debian machine once they are installed:
#     apt-get install -y espeak-ng sox
# This script installs nothing itself; it stops with a message naming any missing tool.
#
# Usage: deploy/prompts/make-prompts.sh        (can be run from any directory; idempotent:
#        it rebuilds en/ and zh/ from scratch, and the same text gives byte-identical files)
#
# Output: 8000 Hz, mono, 16-bit PCM WAV (what media/src/prompt.rs plays as G.711), leading and
# trailing silence trimmed to 50 ms, peak normalised to -3 dBFS. en/ and zh/ hold the same names.
#
# Voices: English uses espeak-ng "en-us". Mandarin uses "cmn-latn-pinyin", NOT "cmn": in
# espeak-ng 1.51 (Debian 12) the "cmn" voice reads the pinyin from its own dictionary by English
# spelling rules, which is unintelligible. "cmn-latn-pinyin" takes the same Chinese characters
# and speaks real Mandarin. Any Latin text in its input is read as tone-numbered pinyin, which
# ZH_FIXES below uses to correct the few words whose dictionary tones are wrong.
#
# Composing the variable prompts (the node plays the pieces back to back; details in README.md):
#   position:  position-before + <N> + position-after
#              en "You are number | forty five | in line."   zh "您现在排在第 | 四十五 | 位。"
#   wait:      N = 0:  wait-before + wait-less-than-minute
#              N = 1:  wait-before + number-1 + wait-minute
#              N = 2:  wait-before + count-2 + wait-minutes   (zh 两分钟, not 二分钟; en "two")
#              else:   wait-before + <N> + wait-minutes
#   callback:  callback-confirm-before + digit-d for each digit + callback-confirm-after
#              (zh digit-1 is 幺, as phone numbers are read in mainland China)
#   <N>, 1..999:
#     1..20      number-N
#     21..99     number-<tens> [+ number-<units> if not 0]       45 = number-40 + number-5
#     100..999   hundreds: number-100 if 1, else number-<h> + number-hundred
#                then the remainder r = N mod 100, if not 0:
#                  en: r as above                                   105 = number-100 + number-5
#                  zh: r 1..9:   number-0 (零) + number-r          105 = 一百 + 零 + 五
#                      r 10..19: number-1 (一) + number-r          115 = 一百 + 一 + 十五
#                      r 20..99: r as above                        245 = 二 + 百 + 四十 + 五
set -euo pipefail

die() { echo "make-prompts.sh: $*" >&2; exit 1; }

for tool in espeak-ng sox; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "'$tool' not found; install it first (Debian: apt-get install -y espeak-ng sox)"
done

EN_VOICE=en-us
ZH_VOICE=cmn-latn-pinyin
SPEED=150 # words per minute; espeak-ng's default of 175 is hurried on a phone line

espeak-ng --voices=cmn | grep -qw "$ZH_VOICE" ||
    die "espeak-ng has no '$ZH_VOICE' voice (espeak-ng-data without Mandarin?)"

# Pronunciation fixes for Mandarin: word in characters = tone-numbered pinyin to speak instead.
# The characters stay the canonical text below; these only patch espeak-ng's dictionary.
ZH_FIXES=(
    "欢迎=huan1ying2"        # dictionary gives 欢 a low tone
    "服务=fu2wu4"            # dictionary gives 务 a neutral tone
    "不到=bu2dao4"           # 不 before a 4th tone is bú
    "不要=bu2yao4"
    "一百=yi4bai3"           # 一 before a 1st-3rd tone is yì
    "一分钟=yi4fen1zhong1"
)

# name | English | Mandarin (simplified Chinese)
PROMPTS=$(cat <<'EOF'
welcome|Welcome to the customer service hotline.|欢迎致电客户服务热线。
menu|For billing, press 1. For technical support, press 2. For all other questions, press 0.|账单问题请按一。技术支持请按二。其他问题请按零。
invalid|Sorry, that is not a valid choice.|对不起，您的选择无效。
no-input|Sorry, we did not receive your choice.|对不起，我们没有收到您的选择。
closed|Our service hours are from eight thirty in the morning to ten thirty in the evening. Please call again later. Goodbye.|我们的服务时间是上午八点半到晚上十点半。请您稍后再拨。再见。
transferring|Please hold while we transfer your call.|正在为您转接，请稍候。
please-wait|All our agents are busy. Please stay on the line, your call is important to us.|所有客服人员正忙，请不要挂机，您的来电对我们很重要。
position-before|You are number|您现在排在第
position-after|in line.|位。
wait-before|Your estimated waiting time is|预计等待时间为
wait-minute|minute.|分钟。
wait-minutes|minutes.|分钟。
wait-less-than-minute|less than one minute.|不到一分钟。
callback-offer|To be called back without losing your place in line, press 9.|如果您希望保留排队位置并等候回电，请按九。
callback-confirm-before|We will call you back at|我们将按以下号码给您回电：
callback-confirm-after|To confirm, press 1. To keep waiting, press 2.|确认请按一，继续等待请按二。
callback-confirmed|Thank you. We will call you back when an agent is free. Goodbye.|谢谢。客服人员空闲时，我们将给您回电。再见。
callback-greeting|This is the customer service hotline returning your call. Please hold for an agent.|您好，这里是客户服务热线，为您回电。请稍候，客服人员马上为您服务。
survey|Please rate our service. Press 1 to 5, where 5 is very satisfied.|请为我们的服务评分。请按一到五，五表示非常满意。
survey-thanks|Thank you for your feedback. Goodbye.|感谢您的反馈。再见。
goodbye|Thank you for calling. Goodbye.|感谢您的来电。再见。
blocked|Sorry, your call cannot be accepted. Goodbye.|抱歉，我们无法受理您的来电。再见。
digit-0|zero|零
digit-1|one|幺
digit-2|two|二
digit-3|three|三
digit-4|four|四
digit-5|five|五
digit-6|six|六
digit-7|seven|七
digit-8|eight|八
digit-9|nine|九
number-0|zero|零
number-1|one|一
number-2|two|二
number-3|three|三
number-4|four|四
number-5|five|五
number-6|six|六
number-7|seven|七
number-8|eight|八
number-9|nine|九
number-10|ten|十
number-11|eleven|十一
number-12|twelve|十二
number-13|thirteen|十三
number-14|fourteen|十四
number-15|fifteen|十五
number-16|sixteen|十六
number-17|seventeen|十七
number-18|eighteen|十八
number-19|nineteen|十九
number-20|twenty|二十
number-30|thirty|三十
number-40|forty|四十
number-50|fifty|五十
number-60|sixty|六十
number-70|seventy|七十
number-80|eighty|八十
number-90|ninety|九十
number-100|one hundred|一百
number-hundred|hundred|百
count-2|two|两
EOF
)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/en" "$work/zh"

# speak VOICE TEXT OUT: synthesise, trim silence to 50 ms each end, resample, normalise.
speak() {
    local voice=$1 text=$2 out=$3
    espeak-ng -v "$voice" -s "$SPEED" -w "$work/raw.wav" -- "$text"
    # -R: repeatable output; -D: no dither, so reruns give identical bytes.
    sox -R -D "$work/raw.wav" -r 8000 -c 1 -b 16 -e signed-integer "$out" \
        silence 1 0.01 -50d reverse silence 1 0.01 -50d reverse \
        pad 0.05 0.05 gain -6 rate 8000 norm -3
}

count=0
while IFS='|' read -r name en zh; do
    [[ -n $name ]] || continue
    [[ -n $en && -n $zh ]] || die "prompt '$name' lacks a text"
    speak "$EN_VOICE" "$en" "$work/en/$name.wav"
    for fix in "${ZH_FIXES[@]}"; do
        zh=${zh//"${fix%%=*}"/" ${fix#*=} "}
    done
    speak "$ZH_VOICE" "$zh" "$work/zh/$name.wav"
    count=$((count + 1))
done <<<"$PROMPTS"
rm -f "$work/raw.wav"

for lang in en zh; do
    rm -rf "${here:?}/$lang"
    mv "$work/$lang" "$here/$lang"
done
echo "make-prompts.sh: wrote $count prompts each to $here/en and $here/zh"
