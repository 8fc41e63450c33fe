// The hand-written training step of training/manual_step.py, op for op, in C++: steps of an epoch
// run here with the GIL released. Why: at inClust+'s size a CPU step is ~150 small ATen ops, and
// from Python each costs its argument parsing and two GIL hand-overs between the training thread
// and the step worker; here the same ops (same kernels, same order, same single-threaded
// arithmetic, so the same bits) run back to back, the worker a C++ thread that never needs the
// GIL. training/native_step.py builds and loads it; tests/test_training_native_step.py holds it to
// the Python step's parameters bit for bit. Keep the two in step: a change to one is a change to both.
#include <torch/extension.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace {

using at::Tensor;
using Clock = std::chrono::steady_clock;
enum Act { RELU = 0, TANH = 1, SIGMOID = 2, IDENTITY = 3 };

Tensor activate_(const Tensor& h, int64_t a) {  // in place, as the Python step's torch.relu_ & co.
  switch (a) {
    case RELU: return h.relu_();
    case TANH: return h.tanh_();
    case SIGMOID: return h.sigmoid_();
    default: return h;
  }
}
Tensor activate(const Tensor& h, int64_t a) {  // not in place: the logits are kept
  switch (a) {
    case RELU: return at::relu(h);
    case TANH: return at::tanh(h);
    case SIGMOID: return at::sigmoid(h);
    default: return h;
  }
}
Tensor activation_back(const Tensor& grad, const Tensor& out, int64_t a) {
  switch (a) {
    case RELU: return at::threshold_backward(grad, out, 0);
    case TANH: return at::tanh_backward(grad, out);
    case SIGMOID: return at::sigmoid_backward(grad, out);
    default: return grad;
  }
}

// Spin on ``ready`` for up to ``kSpin``; true if it became true (else the caller sleeps).
constexpr auto kSpin = std::chrono::microseconds(30);
template <class F>
bool spin_until(F ready) {
  auto until = Clock::now() + kSpin;
  while (!ready()) {
    for (int i = 0; i < 32; ++i) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      asm volatile("yield");
#endif
    }
    if (Clock::now() > until) return ready();
  }
  return true;
}

// One thread running submitted jobs in order (training/step_worker.py's StepWorker). Both sides
// spin a little before they sleep: a hand-over inside a step is a few microseconds apart, a
// futex round trip costs more than that on a virtual machine.
class Worker {
 public:
  explicit Worker(bool threaded) : threaded_(threaded) {
    if (threaded_) thread_ = std::thread([this] { run(); });
  }
  ~Worker() { stop(); }
  void stop() noexcept {  // once the submitted jobs have run; later jobs run on the caller's thread
    if (!threaded_) return;
    drain();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
    threaded_ = false;
  }
  int64_t submit(std::function<void()> job) {
    if (!threaded_) {
      job();
      return ++submitted_;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      jobs_.push_back(std::move(job));
      queued_.store(jobs_.size(), std::memory_order_release);
    }
    wake_.notify_one();
    return ++submitted_;
  }
  void wait_for(int64_t n) {  // until job n (1-based) has run; re-raise a job's error
    if (threaded_ && !spin_until([&] { return done_.load(std::memory_order_acquire) >= n; })) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        finished_.wait(lock, [&] { return done_.load(std::memory_order_acquire) >= n; });
      }
    }
    if (error_) {
      auto error = error_;
      error_ = nullptr;
      std::rethrow_exception(error);
    }
  }
  void wait() { wait_for(submitted_); }
  void drain() noexcept {  // wait for every job, dropping their errors (the caller is raising its own)
    try {
      wait();
    } catch (...) {
    }
  }

 private:
  void run() {
    at::NoGradGuard no_grad;
    while (true) {
      spin_until([&] { return queued_.load(std::memory_order_acquire) != 0; });
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
        queued_.store(jobs_.size(), std::memory_order_release);
      }
      try {
        job();
      } catch (...) {
        if (!error_) error_ = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.fetch_add(1, std::memory_order_release);
      }
      finished_.notify_one();
    }
  }
  bool threaded_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable wake_, finished_;
  std::deque<std::function<void()>> jobs_;
  std::atomic<size_t> queued_{0};
  std::atomic<int64_t> done_{0};
  int64_t submitted_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

struct Batch {
  Tensor x, in_mask, out_mask, covariate, one_hot, unlabeled, noise;
};

struct Branch {  // the classifier/KL branch's results (ManualStep._label_branch)
  Tensor kl, cat, ce, d_zc, r_rows, var;
};

class Steps {
 public:
  // params: per layer weights, biases, their gradients (training/flat_params.py views), then the
  // heads' block [W, b, dW, db], the covariate embedding, prior means and their gradients, and
  // Adam's flat data, gradient, moments and step count. tables: training/batches.py's DeviceRows.
  Steps(std::vector<Tensor> W, std::vector<Tensor> B, std::vector<Tensor> dW, std::vector<Tensor> dB,
        std::vector<Tensor> heads, std::vector<Tensor> embedding, std::vector<Tensor> adam,
        std::vector<Tensor> tables, std::optional<Tensor> bernoulli_per_member, bool bernoulli,
        std::vector<int64_t> shape, std::vector<at::Generator> noise_generators, bool threaded)
      : W_(std::move(W)), B_(std::move(B)), dW_(std::move(dW)), dB_(std::move(dB)), heads_(std::move(heads)),
        emb_(std::move(embedding)), adam_(std::move(adam)), tables_(std::move(tables)),
        bernoulli_k_(std::move(bernoulli_per_member)), bernoulli_(bernoulli), gens_(std::move(noise_generators)),
        worker_(threaded) {
    e_ = shape[0], n_dec_ = shape[1], latent_ = shape[2], n_labels_ = shape[3], act_ = shape[4], out_act_ = shape[5];
    l2_ = shape[6] != 0, unsupervised_ = shape[7] != 0;
  }

  void close() {  // stop the worker thread (NativeSteps.close)
    pybind11::gil_scoped_release no_gil;
    worker_.stop();
  }

  // Steps [first, end) of an epoch over epoch_rows [K, n_train]: loss weights (reconstruction, kl,
  // categorical, label), one learning rate per step, the L2 floor; adds each step's terms [6, K]
  // times its batch size to sums (float64), as the trainer's loop does.
  void run(const Tensor& epoch_rows, int64_t first, int64_t end, int64_t batch_size, std::vector<double> w,
           std::vector<double> lrs, double l2_eps, Tensor sums) {
    pybind11::gil_scoped_release no_gil;
    at::NoGradGuard no_grad;
    auto steps = (epoch_rows.size(1) + batch_size - 1) / batch_size;
    for (int64_t s = first; s < end; ++s) {
      Batch batch = ahead_step_ == s ? std::move(ahead_) : gather(epoch_rows, s, batch_size);
      ahead_step_ = -1;
      std::function<void()> then;
      if (s + 1 < steps)
        then = [this, &epoch_rows, s, batch_size] {
          ahead_ = gather(epoch_rows, s + 1, batch_size);
          ahead_step_ = s + 1;
        };
      auto terms = step(batch, w, lrs[s - first], l2_eps, std::move(then));
      sums += terms.to(at::kDouble) * batch.noise.size(1);
    }
  }

 private:
  Batch gather(const Tensor& epoch_rows, int64_t s, int64_t batch_size) {  // trainer._step_inputs + DeviceRows.batch
    auto rows = epoch_rows.slice(1, s * batch_size, (s + 1) * batch_size);
    auto k = rows.size(0), n = rows.size(1);
    Batch b;
    b.noise = at::empty({k, n, latent_}, rows.options().dtype(at::kFloat));
    for (int64_t i = 0; i < k; ++i) b.noise[i].normal_(0, 1, gens_[i]);
    auto flat = rows.reshape(-1);
    const auto &x = tables_[0], &row_cell = tables_[1], &row_input = tables_[2], &row_output = tables_[3],
               &masks = tables_[4], &covariate = tables_[5], &one_hot = tables_[6], &unlabeled = tables_[7];
    auto cells = row_cell.index_select(0, flat);
    b.x = x.index_select(0, cells).reshape({k, n, -1});
    b.in_mask = masks.index_select(0, row_input.index_select(0, flat)).reshape({k, n, -1});
    b.out_mask = masks.index_select(0, row_output.index_select(0, flat)).reshape({k, n, -1});
    b.covariate = covariate.index_select(0, cells).reshape({k, n});
    b.one_hot = one_hot.index_select(0, cells).reshape({k, n, -1});
    b.unlabeled = unlabeled.index_select(0, cells).reshape({k, n, 1});
    return b;
  }

  static void weight_grad(const Tensor& d_out, const Tensor& h_in, Tensor& grad_w, Tensor& grad_b) {
    at::bmm_out(grad_w, d_out.transpose(1, 2), h_in);
    at::sum_out(grad_b, d_out, {1}, true);
  }

  Tensor step(const Batch& b, const std::vector<double>& w, double lr, double l2_eps, std::function<void()> meanwhile) {
    try {
      return step_body(b, w, lr, l2_eps, std::move(meanwhile));
    } catch (...) {
      worker_.drain();  // its jobs hold references into this step
      throw;
    }
  }

  Tensor step_body(const Batch& b, const std::vector<double>& w, double lr, double l2_eps, std::function<void()> meanwhile) {
    worker_.wait();
    if (meanwhile) worker_.submit(std::move(meanwhile));
    const auto& x = b.x;
    auto k = x.size(0), n = x.size(1);
    auto n_cov = emb_[0].size(1);
    auto cov_rows = k == 1 ? b.covariate.reshape(-1)
                           : (b.covariate + n_cov * at::arange(k, b.covariate.options()).unsqueeze(1)).reshape(-1);
    // --- forward
    auto h = x * b.in_mask;
    if (l2_) h = h / at::linalg_vector_norm(h, 2, {-1}, true).clamp_min(l2_eps);
    std::vector<Tensor> hs{h};
    for (int64_t i = 0; i < e_; ++i) hs.push_back(activate_(at::baddbmm(B_[i], hs.back(), W_[i].transpose(1, 2)), act_));
    const auto &heads_w = heads_[0], &heads_b = heads_[1];
    auto heads = at::baddbmm(heads_b, hs.back(), heads_w.transpose(1, 2));
    auto mu = heads.slice(-1, 0, latent_), log_var = heads.slice(-1, latent_);
    auto sd = at::exp(0.5 * log_var);  // the posterior's standard deviation
    auto branch = std::make_shared<Branch>();
    auto branch_job = worker_.submit([this, branch, mu, log_var, cov_rows, &b, &w, n] {
      *branch = label_branch(mu, log_var, cov_rows, b.one_hot, b.unlabeled, w, n);
    });
    std::vector<Tensor> gs{at::addcmul(mu, sd, b.noise)};
    for (int64_t j = 0; j < n_dec_; ++j)
      gs.push_back(activate_(at::baddbmm(B_[e_ + 3 + j], gs.back(), W_[e_ + 3 + j].transpose(1, 2)), act_));
    auto logits = at::baddbmm(B_.back(), gs.back(), W_.back().transpose(1, 2));
    auto rec = std::make_shared<Tensor>();
    auto d_logits = reconstruction(logits, x, b.out_mask, w[0] / n, rec);

    // --- backward: the chain here, the weight gradients one behind on the worker
    std::function<void()> held;
    auto grad_job = [&](std::function<void()> job) {
      if (held) worker_.submit(std::move(held));
      held = std::move(job);
    };
    auto linear_back = [&](size_t i, const Tensor& d_out, const Tensor& h_in, bool need_input) {
      grad_job([this, i, d_out, h_in] { weight_grad(d_out, h_in, dW_[i], dB_[i]); });
      return need_input ? at::bmm(d_out, W_[i]) : Tensor();
    };
    auto d = linear_back(W_.size() - 1, d_logits, gs.back(), true);
    for (int64_t j = n_dec_ - 1; j >= 0; --j) d = linear_back(e_ + 3 + j, activation_back(d, gs[j + 1], act_), gs[j], true);
    const auto& d_z = d;
    worker_.wait_for(branch_job + 1);  // the branch and the reconstruction loss's value
    auto total = *rec * w[0] + branch->kl * w[1] + branch->cat * w[2] + branch->ce * w[3];
    auto terms = at::stack({total, *rec, branch->kl, branch->cat, branch->ce, x.new_zeros({k})});
    auto d_mu = d_z + branch->d_zc;
    auto d_log_var = d_z * b.noise * sd * 0.5 + 0.5 * branch->r_rows * (branch->var - 1);
    auto d_heads = at::cat({d_mu, d_log_var}, -1);
    grad_job([this, d_heads, hs] { weight_grad(d_heads, hs.back(), heads_[2], heads_[3]); });
    Tensor d_h = e_ > 0 ? at::bmm(d_heads, heads_w) : Tensor();
    for (int64_t i = e_ - 1; i >= 0; --i) d_h = linear_back(i, activation_back(d_h, hs[i + 1], act_), hs[i], i > 0);
    held();
    worker_.wait();
    adam_[4].add_(1);  // training/flat_params.py FlatParameters.adam_step
    at::_fused_adam_({adam_[0]}, {adam_[1]}, {adam_[2]}, {adam_[3]}, {}, {adam_[4]}, lr, 0.9, 0.999, 0.0, 1e-8, false, false);
    return terms;
  }

  // manual_step._reconstruction: the gradient w.r.t. the logits (times scale) now; the loss's
  // per-member value [K] on the worker, into *rec.
  Tensor reconstruction(const Tensor& logits, const Tensor& x, const Tensor& out_mask, double scale,
                        const std::shared_ptr<Tensor>& rec) {
    auto gaussian = [&](std::function<Tensor()>* rows) {
      auto y = activate(logits, out_act_);
      auto d = y - x;
      auto dm = d * out_mask;
      *rows = [dm, d] { return 0.5 * (dm * d).sum(-1); };
      return activation_back(dm * scale, y, out_act_);
    };
    auto cross_entropy = [&](std::function<Tensor()>* rows) {
      *rows = [logits, x, out_mask] {
        return (at::binary_cross_entropy_with_logits(logits, x, {}, {}, at::Reduction::None) * out_mask).sum(-1);
      };
      return (at::sigmoid(logits) - x) * (out_mask * scale);
    };
    std::function<Tensor()> rows, rows_b, rows_g;
    Tensor grad;
    if (!bernoulli_k_) {
      grad = bernoulli_ ? cross_entropy(&rows) : gaussian(&rows);
    } else {
      auto gb = cross_entropy(&rows_b), gg = gaussian(&rows_g);
      auto per = *bernoulli_k_;
      rows = [per, rows_b, rows_g] { return at::where(per.unsqueeze(1), rows_b(), rows_g()); };
      grad = at::where(per.unsqueeze(1).unsqueeze(2), gb, gg);
    }
    worker_.submit([rows, rec] { *rec = rows().mean(-1); });
    return grad;
  }

  static Tensor log_softmax(const Tensor& s) {  // manual_step._log_softmax
    auto z = s - at::amax(s, {-1}, true);
    return z - z.exp().sum(-1, true).log_();
  }

  Branch label_branch(const Tensor& mu, const Tensor& log_var, const Tensor& cov_rows, const Tensor& one_hot,
                      const Tensor& unlabeled, const std::vector<double>& w, int64_t n) {
    auto k = mu.size(0);
    const auto &emb = emb_[0], &m = emb_[1];
    auto n_cov = emb.size(1);
    auto z_c = mu - emb.view({k * n_cov, -1}).index_select(0, cov_rows).view({k, n, -1});
    auto cls_w = at::cat({W_[e_ + 2], -m}, 1);
    auto cls_b = at::cat({B_[e_ + 2], 0.5 * (m * m).sum(-1).unsqueeze(1)}, -1);
    auto scores = at::baddbmm(cls_b, z_c, cls_w.transpose(1, 2));
    auto log_q = log_softmax(scores.slice(-1, 0, n_labels_));
    auto q = log_q.exp();
    auto resp = at::addcmul(one_hot, q, unlabeled);
    Branch out;
    out.var = log_var.exp();
    auto col = 0.5 * ((z_c * z_c - log_var + out.var).sum(-1, true) - latent_);
    auto kl_t = scores.slice(-1, n_labels_) + col;
    out.kl = (resp * kl_t).sum(-1).mean(-1);
    out.cat = unsupervised_ ? (q * log_q).sum(-1).mean(-1) : mu.new_zeros({k});
    out.ce = -(log_q * one_hot).sum(-1).sum(-1) / n;
    auto r = (w[1] / n) * resp;
    out.r_rows = r.sum(-1, true);
    auto g = (w[1] / n) * kl_t * unlabeled * q;
    if (unsupervised_ && w[2] != 0) g = g + (w[2] / n) * (q * log_q + q);
    if (w[3] != 0) g = g - (w[3] / n) * one_hot;
    auto d_s = g - q * g.sum(-1, true);
    auto d_scores = at::cat({d_s, r}, -1);
    out.d_zc = at::baddbmm(z_c * out.r_rows, d_scores, cls_w);
    // the classifier's, the prior means' and the covariate embedding's gradients
    auto d_cls_w = at::bmm(d_scores.transpose(1, 2), z_c);
    dW_[e_ + 2].copy_(d_cls_w.slice(1, 0, n_labels_));
    at::sum_out(dB_[e_ + 2], d_s, {1}, true);
    at::sub_out(emb_[3], m * r.sum(1).unsqueeze(-1), d_cls_w.slice(1, n_labels_));
    auto& d_emb = emb_[2];
    d_emb.zero_();
    d_emb.view({k * n_cov, -1}).index_add_(0, cov_rows, out.d_zc.reshape({-1, out.d_zc.size(-1)}), -1);
    return out;
  }

  std::vector<Tensor> W_, B_, dW_, dB_, heads_, emb_, adam_, tables_;
  std::optional<Tensor> bernoulli_k_;
  bool bernoulli_;
  std::vector<at::Generator> gens_;
  int64_t e_, n_dec_, latent_, n_labels_, act_, out_act_;
  bool l2_, unsupervised_;
  Batch ahead_;
  int64_t ahead_step_ = -1;
  Worker worker_;  // last: its thread stops before the tensors its jobs use go
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Steps>(m, "Steps")
      .def(pybind11::init<std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>,
                          std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>,
                          std::optional<Tensor>, bool, std::vector<int64_t>, std::vector<at::Generator>, bool>())
      .def("run", &Steps::run)
      .def("close", &Steps::close);
}
