// Stemweave VST3 (JUCE 7): the same stub as the LV2 build, for DAWs without LV2 (Ableton, FL Studio, Cubase).
// The audio thread only copies and swaps pointers; the server link (../common/sw_link.c) owns the socket on its
// own thread. The host's play head gives the timeline position, so captures and stems sit on the host timeline,
// and its musical position (PPQ, time signature, tempo) lets loop mode play the server's live loop bar for bar.
// The state keeps the returned stems and the last complete capture (../common/sw_state.h).
#include <juce_audio_processors/juce_audio_processors.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

extern "C" {
#include "../common/sw_link.h"
#include "../common/sw_loop.h"
#include "../common/sw_state.h"
}

namespace
{
constexpr double maxCaptureSeconds = 120.0;
constexpr double firstLoopWaitSeconds = 10.0;  // an offline render waits this long for the server's loop
const juce::StringArray slotNames{"bass", "drums", "guitar", "piano"};

struct CaptureDeleter
{
    void operator()(SwCapture* capture) const { sw_capture_free(capture); }
};
using CapturePtr = std::unique_ptr<SwCapture, CaptureDeleter>;
}  // namespace

class StemweaveProcessor final : public juce::AudioProcessor
{
public:
    StemweaveProcessor()
        : AudioProcessor(BusesProperties()
                             .withInput("Input", juce::AudioChannelSet::stereo(), true)
                             .withOutput("Output", juce::AudioChannelSet::stereo(), true))
    {
        addParameter(capture = new juce::AudioParameterBool({"capture", 1}, "Capture", false));
        addParameter(markStart = new juce::AudioParameterFloat({"mark_start", 1}, "Region start (s)", 0.0f, 36000.0f, 0.0f));
        addParameter(markEnd = new juce::AudioParameterFloat({"mark_end", 1}, "Region end (s)", 0.0f, 36000.0f, 0.0f));
        addParameter(separate = new juce::AudioParameterBool({"separate", 1}, "Separate", false));
        addParameter(accompany = new juce::AudioParameterBool({"accompany", 1}, "Accompany", false));
        addParameter(cancel = new juce::AudioParameterBool({"cancel", 1}, "Cancel", false));
        addParameter(captureAs = new juce::AudioParameterChoice({"capture_as", 1}, "Capture is stem", slotNames, 1));
        addParameter(target = new juce::AudioParameterChoice({"target", 1}, "Generate stem", slotNames, 0));
        addParameter(solo = new juce::AudioParameterChoice({"solo", 1}, "Play stem",
                                                           juce::StringArray{"all", "bass", "drums", "guitar", "piano"}, 0));
        addParameter(dry = new juce::AudioParameterFloat({"dry", 1}, "Dry in region", 0.0f, 2.0f, 0.0f));
        for (int s = 0; s < SW_SLOTS; ++s)
            addParameter(gains[s] = new juce::AudioParameterFloat({juce::String("gain_") + slotNames[s], 1},
                                                                  slotNames[s] + " gain", 0.0f, 2.0f, 1.0f));
        addParameter(loop = new juce::AudioParameterBool({"loop", 1}, "Loop result", false));
        addParameter(loopMode = new juce::AudioParameterBool({"loop_mode", 1}, "Loop mode", false));
        sw_loop_player_init(&loops);
        link = sw_link_new(nullptr, "stemweave-vst3");
    }

    ~StemweaveProcessor() override
    {
        sw_link_free(link);  // joins the link thread: nothing reads the capture buffers after this
        sw_stems_free(stems);
        sw_stems_free(restored.exchange(nullptr));
        sw_loop_free(loops.current);
        sw_loop_free(loops.pending);
    }

    const juce::String getName() const override { return "Stemweave"; }
    bool acceptsMidi() const override { return false; }
    bool producesMidi() const override { return false; }
    double getTailLengthSeconds() const override { return 0.0; }
    int getNumPrograms() override { return 1; }
    int getCurrentProgram() override { return 0; }
    void setCurrentProgram(int) override {}
    const juce::String getProgramName(int) override { return {}; }
    void changeProgramName(int, const juce::String&) override {}
    bool hasEditor() const override { return true; }
    juce::AudioProcessorEditor* createEditor() override { return new juce::GenericAudioProcessorEditor(*this); }

    bool isBusesLayoutSupported(const BusesLayout& layouts) const override
    {
        const auto& out = layouts.getMainOutputChannelSet();
        return (out == juce::AudioChannelSet::stereo() || out == juce::AudioChannelSet::mono()) &&
               layouts.getMainInputChannelSet() == out;
    }

    void prepareToPlay(double sampleRate, int) override
    {
        rate = sampleRate;
        const auto frames = (size_t)(maxCaptureSeconds * sampleRate);
        for (auto& buffer : buffers)
            for (auto& channel : buffer.data)
                if (channel.size() != frames) channel.assign(frames, 0.0f);  // not on the audio thread
        ownFrame = 0;
        clock.valid = 0;
        setLatencySamples(0);  // audio is never delayed: stems are placed on the timeline
        const juce::ScopedLock lock(getCallbackLock());
        adoptRestoredCapture();  // a state set before the buffers existed, or at another rate
    }

    void releaseResources() override {}

    /// What the status would show (idle 0, capturing 1, working 2, ready 3, error 4, server offline 5).
    int status() const
    {
        if (capturing) return SW_STATE_CAPTURING;
        if (!link) return SW_STATE_OFFLINE;
        const auto state = sw_link_state(link);
        if (state == SW_STATE_WORKING || state == SW_STATE_OFFLINE) return state;
        if (!sw_link_online(link)) return SW_STATE_OFFLINE;
        if (state == SW_STATE_ERROR) return state;
        return stems ? SW_STATE_READY : SW_STATE_IDLE;
    }

    void processBlock(juce::AudioBuffer<float>& audio, juce::MidiBuffer&) override
    {
        juce::ScopedNoDenormals noDenormals;
        if (auto* fresh = restored.exchange(nullptr)) swapIn(fresh);
        if (link)
            if (auto* fresh = sw_link_take_result(link)) swapIn(fresh);

        // the host timeline: the play head when the host has one, else our own frame count
        int64_t frame = ownFrame;
        bool rolling = true;
        juce::Optional<juce::AudioPlayHead::PositionInfo> info;
        if (auto* head = getPlayHead())
            if ((info = head->getPosition()))
            {
                if (auto samples = info->getTimeInSamples()) frame = *samples;
                rolling = info->getIsPlaying();
            }
        if (!rolling && isNonRealtime())
        {
            // An offline host whose transport does not run (pedalboard, command-line renderers) processes a file
            // start to end: our own frame count is its timeline, and loop mode keeps the loop's own bars.
            frame = ownFrame;
            rolling = true;
            clock.valid = 0;
        }
        else if (info)
            readMusicalPosition(*info, frame);
        else
            clock.valid = 0;
        readControls();
        updateLoop();

        const int n = audio.getNumSamples();
        const int channels = audio.getNumChannels();
        float* left = audio.getWritePointer(0);
        float* right = channels > 1 ? audio.getWritePointer(1) : left;
        const double ms = *markStart, me = *markEnd;
        const bool marks = me > ms;
        const auto markFirst = (int64_t)std::llround(ms * rate), markLast = (int64_t)std::llround(me * rate);
        const auto maxFrames = (int64_t)buffers[0].data[0].size();
        if (frame != expected && capturing && !marks) captureDone();  // relocated
        for (int i = 0; i < n; ++i)
        {
            const int64_t f = frame + i;
            const float l = left[i], r = right[i];
            if (rolling && armed && maxFrames > 0)
            {
                if (marks)
                {
                    // each sample at its frame's place in the span: skipped frames stay silent, never shift
                    if (capturing && f >= markLast) captureDone();
                    if (!capturing && f >= markFirst && f < markLast) startCapture(markFirst, markLast - markFirst);
                    if (capturing && f >= markFirst && f < markLast)
                    {
                        const int64_t k = f - markFirst;
                        if (k < maxFrames)
                        {
                            for (auto& channel : buffers[current].data)
                                if (k > capLen) std::fill(channel.begin() + capLen, channel.begin() + k, 0.0f);
                            write(k, l, r);
                            if (k >= capLen) capLen = k + 1;
                        }
                        if (k + 1 == capWant || k + 1 >= maxFrames) captureDone();
                    }
                }
                else
                {
                    if (!capturing) startCapture(f, 0);
                    if (capturing)
                    {
                        write(capLen, l, r);
                        if (++capLen >= maxFrames) captureDone();
                    }
                }
            }
            float outL = l, outR = r;
            if (stems && rolling)
            {
                int64_t k = f - stems->position;
                if (*loop && k >= 0) k %= stems->frames;
                if (k >= 0 && k < stems->frames)
                {
                    const float base = stems->task == SW_TASK_ACCOMPANY ? 1.0f : dry->get();
                    outL = base * l;
                    outR = base * r;
                    const auto len = (size_t)stems->frames;
                    for (int s = 0; s < stems->n_stems; ++s)
                    {
                        const float g = stemGain(s);
                        if (g == 0.0f) continue;
                        const float* stem = stems->data + (size_t)s * (size_t)stems->channels * len;
                        outL += g * stem[k];
                        outR += g * stem[(stems->channels > 1 ? len : 0) + (size_t)k];
                    }
                }
            }
            left[i] = outL;
            if (channels > 1) right[i] = outR;
        }
        if (loopOn)  // loop mode: the server's live loop on top, bar for bar with the host
        {
            float* const out[2] = {left, channels > 1 ? right : nullptr};
            if (auto* old = sw_loop_player_render(&loops, &clock, frame, rolling ? 1 : 0, out, (uint32_t)n))
                sw_link_retire_loop(link, old);
        }
        expected = rolling ? frame + n : frame;
        if (rolling) ownFrame = frame + n;
    }

    void getStateInformation(juce::MemoryBlock& dest) override
    {
        const SwStems* st = stems;  // retired stems are freed by the link only after a grace period
        CapturePtr saved = copyCapture();
        SwCaptureView view{};
        if (saved)
        {
            view.channels = saved->channels;
            view.rate = saved->rate;
            view.frames = saved->frames;
            view.position = saved->position;
            view.channel[0] = saved->data;
            view.channel[1] = saved->channels > 1 ? saved->data + saved->frames : nullptr;
        }
        const size_t size = sw_state_size(st, saved ? &view : nullptr);
        if (size == 0) return;
        dest.setSize(size);
        if (sw_state_to_memory(st, saved ? &view : nullptr, dest.getData(), size) != size) dest.reset();
    }

    void setStateInformation(const void* data, int size) override
    {
        SwStems* st = nullptr;
        SwCapture* raw = nullptr;
        if (size <= 0 || sw_state_from_memory(data, (size_t)size, &st, &raw) != 0)
        {
            DBG("Stemweave: the state is not a Stemweave state: ignored");
            return;
        }
        CapturePtr saved(raw);
        if (st) sw_stems_free(restored.exchange(st));
        if (!saved) return;
        // The capture buffers belong to the audio thread: write them with processing held off (the callback
        // lock); before prepareToPlay has made them at the capture's rate, keep the capture until it has.
        const juce::ScopedLock lock(getCallbackLock());
        restoredCapture = std::move(saved);
        adoptRestoredCapture();
    }

private:
    struct CaptureBuffer
    {
        std::vector<float> data[2];
        uint64_t seq = 0;
    };

    /// The musical position for loop mode: bar, beat and tempo in quarter notes from the play head.
    void readMusicalPosition(const juce::AudioPlayHead::PositionInfo& position, int64_t frame)
    {
        const auto bpm = position.getBpm();
        const auto ppq = position.getPpqPosition();
        const auto signature = position.getTimeSignature();
        if (!bpm || !ppq || !signature || *bpm <= 0.0 || signature->numerator < 1 || signature->denominator < 1)
        {
            clock.valid = 0;  // no musical position: the loop keeps its own bars
            return;
        }
        const double quartersPerBar = signature->numerator * 4.0 / signature->denominator;
        double bar, beat;
        const auto barStart = position.getPpqPositionOfLastBarStart();
        const auto barCount = position.getBarCount();
        if (barStart && barCount && *ppq >= *barStart)
        {
            bar = (double)*barCount;
            beat = *ppq - *barStart;
        }
        else  // a constant meter from the start
        {
            bar = std::floor(*ppq / quartersPerBar);
            beat = *ppq - bar * quartersPerBar;
        }
        if (sw_bar_clock_update(&clock, frame, bar, juce::jlimit(0.0, quartersPerBar, beat), quartersPerBar,
                                rate * 60.0 / *bpm) != 0)
            clock.valid = 0;
    }

    void offerLoop(SwLoop* fresh)
    {
        if (fresh) sw_link_retire_loop(link, sw_loop_player_offer(&loops, fresh));
    }

    /// Loop mode, once per block: tell the link, take a newer loop; an offline render waits for its first loop.
    void updateLoop()
    {
        if (!link) return;
        const bool on = *loopMode;
        if (on != loopOn)
        {
            if (!on)
            {
                sw_link_retire_loop(link, loops.current);
                sw_link_retire_loop(link, loops.pending);
                sw_loop_player_init(&loops);
            }
            loopOn = on;
            loopWaited = false;
        }
        sw_link_loop_enable(link, on ? 1 : 0, (int)std::lround(rate));
        if (!on) return;
        offerLoop(sw_link_take_loop(link));
        if (isNonRealtime() && !loops.current && !loops.pending && !loopWaited)
        {
            loopWaited = true;  // offline: no deadline, so start the render in the loop
            sw_link_wait_loop(link, firstLoopWaitSeconds);
            offerLoop(sw_link_take_loop(link));
        }
    }

    /// Publish what getStateInformation (another thread) sees as the last complete capture: a sequence lock.
    void publishCapture(int buffer, int64_t frames, int64_t position, bool isMono)
    {
        savedSeq.fetch_add(1, std::memory_order_relaxed);  // odd: changing
        std::atomic_thread_fence(std::memory_order_release);
        savedBuffer.store(buffer, std::memory_order_relaxed);
        savedFrames.store(frames, std::memory_order_relaxed);
        savedPosition.store(position, std::memory_order_relaxed);
        savedMono.store(isMono, std::memory_order_relaxed);
        savedSeq.fetch_add(1, std::memory_order_release);  // even: stable
    }

    /// A consistent copy of the last complete capture, or null.
    CapturePtr copyCapture() const
    {
        for (int attempt = 0; attempt < 20; ++attempt)
        {
            const unsigned before = savedSeq.load(std::memory_order_acquire);
            if (before & 1u)
            {
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
                continue;
            }
            const int b = savedBuffer.load(std::memory_order_relaxed);
            const int64_t frames = savedFrames.load(std::memory_order_relaxed);
            if (b < 0 || b > 1 || frames < 1 || (size_t)frames > buffers[b].data[0].size()) return nullptr;
            const int channelCount = savedMono.load(std::memory_order_relaxed) ? 1 : 2;
            CapturePtr copy((SwCapture*)calloc(1, sizeof(SwCapture)));
            if (!copy) return nullptr;
            copy->data = (float*)malloc((size_t)channelCount * (size_t)frames * sizeof(float));
            if (!copy->data) return nullptr;
            copy->channels = channelCount;
            copy->rate = (int)std::lround(rate);
            copy->frames = frames;
            copy->position = savedPosition.load(std::memory_order_relaxed);
            for (int ch = 0; ch < channelCount; ++ch)
                std::copy(buffers[b].data[ch].begin(), buffers[b].data[ch].begin() + frames,
                          copy->data + (size_t)ch * (size_t)frames);
            std::atomic_thread_fence(std::memory_order_acquire);
            if (savedSeq.load(std::memory_order_relaxed) == before) return copy;
        }
        return nullptr;
    }

    /// Make the restored capture the complete capture once the buffers exist at its rate (under the callback lock).
    void adoptRestoredCapture()
    {
        if (!restoredCapture || buffers[0].data[0].empty() || restoredCapture->rate != (int)std::lround(rate))
            return;  // not yet: prepareToPlay at the capture's rate adopts it
        adoptCapture(*restoredCapture);
        restoredCapture.reset();
    }

    void adoptCapture(const SwCapture& c)
    {
        if ((size_t)c.frames > buffers[0].data[0].size())
        {
            DBG("Stemweave: the saved capture is longer than the capture buffer: not restored");
            return;
        }
        int b = -1;
        for (int wait = 0; wait < 200 && b < 0; ++wait)  // a job in flight may still be sending one buffer
        {
            for (int k = 1; k <= 2 && b < 0; ++k)
                if (bufferFree((current + k) % 2)) b = (current + k) % 2;
            if (b < 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        if (b < 0) return;
        std::copy(c.data, c.data + c.frames, buffers[b].data[0].begin());
        const float* second = c.channels > 1 ? c.data + c.frames : c.data;
        std::copy(second, second + c.frames, buffers[b].data[1].begin());
        buffers[b].seq = 0;
        current = b;
        capturing = armed = false;
        complete = true;
        mono = c.channels == 1;
        capStart = c.position;
        capLen = c.frames;
        capWant = 0;
        pending = -1;
        publishCapture(b, capLen, capStart, mono);
    }

    void swapIn(SwStems* fresh)
    {
        sw_link_retire(link, stems);
        stems = fresh;
    }

    bool bufferFree(int b) const
    {
        return !buffers[b].seq || !link || sw_link_audio_released(link, buffers[b].seq);
    }

    void startCapture(int64_t start, int64_t want)
    {
        int b = complete || buffers[current].seq ? 1 - current : current;
        if (!bufferFree(b)) b = 1 - b;
        if (!bufferFree(b)) return;
        if (savedBuffer.load(std::memory_order_relaxed) == b) publishCapture(-1, 0, 0, false);  // to be overwritten
        current = b;
        buffers[b].seq = 0;
        capturing = true;
        complete = false;
        mono = true;
        capStart = start;
        capLen = 0;
        capWant = want;
    }

    void write(int64_t k, float l, float r)
    {
        buffers[current].data[0][(size_t)k] = l;
        buffers[current].data[1][(size_t)k] = r;
        mono = mono && l == r;
    }

    void captureDone()
    {
        capturing = false;
        armed = false;
        complete = capLen > 0;
        if (complete) publishCapture(current, capLen, capStart, mono);
        if (complete && pending >= 0) submit((SwTask)pending);
    }

    void submit(SwTask task)
    {
        if (!link || capLen < 1) return;
        auto& buffer = buffers[current];
        SwRequest r{};
        r.task = task;
        r.rate = (int)std::lround(rate);
        r.channels = mono ? 1 : 2;
        r.frames = capLen;
        r.position = capStart;
        r.seed = 0;
        r.given_slot = captureAs->getIndex();
        r.target_slot = target->getIndex();
        r.audio[0] = buffer.data[0].data();
        r.audio[1] = buffer.data[1].data();
        const uint64_t seq = sw_link_submit(link, &r);
        if (!seq) return;
        buffer.seq = seq;
        pending = -1;
        if (isNonRealtime())  // offline bounce: no deadline, so wait for the stems to keep the render exact
        {
            sw_link_wait(link, seq, 3600.0);
            if (auto* fresh = sw_link_take_result(link)) swapIn(fresh);
        }
    }

    void readControls()
    {
        const bool on = *capture;
        const bool marksChanged = markStart->get() != lastMarkStart || markEnd->get() != lastMarkEnd;
        if (on && (!lastCapture || marksChanged))
        {
            if (capturing) captureDone();
            armed = true;
        }
        if (!on && lastCapture)
        {
            if (capturing) captureDone();
            armed = false;
        }
        lastCapture = on;
        lastMarkStart = markStart->get();
        lastMarkEnd = markEnd->get();
        if (*cancel && !lastCancel)
        {
            pending = -1;
            if (link) sw_link_cancel(link);
        }
        int task = -1;
        if (*separate && !lastSeparate) task = SW_TASK_SEPARATE;
        if (*accompany && !lastAccompany) task = SW_TASK_ACCOMPANY;
        lastSeparate = *separate;
        lastAccompany = *accompany;
        lastCancel = *cancel;
        if (task >= 0)
        {
            if (complete && !capturing && !armed)
                submit((SwTask)task);
            else
                pending = task;
        }
    }

    float stemGain(int i) const
    {
        const int slot = stems->slot_of[i];
        if (slot < 0) return 0.0f;
        if (stems->task == SW_TASK_ACCOMPANY && slot == stems->given_slot) return 0.0f;
        const int only = solo->getIndex();
        if (only > 0 && only - 1 != slot) return 0.0f;
        return gains[slot]->get();
    }

    juce::AudioParameterBool *capture, *separate, *accompany, *cancel, *loop, *loopMode;
    juce::AudioParameterFloat *markStart, *markEnd, *dry, *gains[SW_SLOTS];
    juce::AudioParameterChoice *captureAs, *target, *solo;

    SwLink* link = nullptr;
    SwStems* stems = nullptr;
    std::atomic<SwStems*> restored{nullptr};
    double rate = 44100.0;
    int64_t ownFrame = 0, expected = 0;
    CaptureBuffer buffers[2];
    int current = 0;
    bool capturing = false, armed = false, complete = false, mono = true;
    int64_t capStart = 0, capLen = 0, capWant = 0;
    bool lastCapture = false, lastSeparate = false, lastAccompany = false, lastCancel = false;
    float lastMarkStart = 0.0f, lastMarkEnd = 0.0f;
    int pending = -1;

    // loop mode
    SwBarClock clock{};
    SwLoopPlayer loops{};
    bool loopOn = false, loopWaited = false;

    // the last complete capture, for getStateInformation (a sequence lock; see publishCapture)
    std::atomic<unsigned> savedSeq{0};
    std::atomic<int> savedBuffer{-1};
    std::atomic<int64_t> savedFrames{0}, savedPosition{0};
    std::atomic<bool> savedMono{false};
    CapturePtr restoredCapture;  // set before prepareToPlay made the buffers

    JUCE_DECLARE_NON_COPYABLE_WITH_LEAK_DETECTOR(StemweaveProcessor)
};

juce::AudioProcessor* JUCE_CALLTYPE createPluginFilter() { return new StemweaveProcessor(); }
